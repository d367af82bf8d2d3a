//! The application as the balancer and the agent see it: answers, health, the counters the load
//! is derived from, a full queue (only requests that wait count against it), and a shutdown that
//! lets requests in flight finish.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use autoscaler_app::{AppConfig, Stats};
use autoscaler_testkit::http_get as get;

async fn stats(address: SocketAddr) -> Stats {
    let (status, body) = get(address, "/stats").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

struct Running {
    address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), autoscaler_app::AppError>>,
}

async fn start(config: AppConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(autoscaler_app::run(config, listener, async {
        stopped.await.ok();
    }));
    Running {
        address,
        stop,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_serves_answers_health_checks_and_counts_slot_time() {
    let mut config = AppConfig::new("local-0007");
    config.slots = 2;
    config.service_time = Duration::from_millis(100);
    config.cpu_time = Duration::from_millis(5);
    let app = start(config).await;

    assert_eq!(get(app.address, "/healthz").await, (200, "ok\n".into()));
    let (status, body) = get(app.address, "/").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("served by local-0007 in "), "{body}");
    assert_eq!(get(app.address, "/elsewhere").await.0, 404);

    // Four requests at once on two slots: two waves of 100 ms, 0.4 s of slot time in all.
    let before = stats(app.address).await;
    let started = Instant::now();
    let requests: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get(app.address, "/")))
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().0, 200);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "two waves on two slots: {:?}",
        started.elapsed()
    );
    let after = stats(app.address).await;
    assert_eq!(after.requests_total - before.requests_total, 4);
    let busy = after.busy_seconds_total - before.busy_seconds_total;
    // At least the 4 x 100 ms served; more on a busy machine, whose sleeps run late.
    assert!((0.4..1.2).contains(&busy), "slot time {busy} s");
    assert_eq!((after.slots, after.in_flight, after.queued), (2, 0, 0));
    assert_eq!(after.instance_id, "local-0007");

    app.stop.send(()).unwrap();
    app.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_with_503() {
    let mut config = AppConfig::new("local-0001");
    config.slots = 1;
    config.max_queue = 1;
    // Long enough that the second request queues behind the first even on a busy machine.
    config.service_time = Duration::from_secs(3);
    let app = start(config).await;
    let first = tokio::spawn(get(app.address, "/"));
    let second = tokio::spawn(get(app.address, "/"));
    // The first holds the slot and the second waits: a third finds the queue full.
    let address = app.address;
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let now = stats(address).await;
        if (now.in_flight, now.queued) == (1, 1) {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "the second request never queued behind the first: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = get(app.address, "/").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(second.await.unwrap().0, 200);
    let counted = stats(app.address).await;
    assert_eq!((counted.requests_total, counted.refused_total), (2, 1));
    app.stop.send(()).unwrap();
    app.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_together_on_a_free_slot_are_served_not_refused() {
    // One slot, a queue of one: of two requests arriving together, one takes the slot and the
    // other waits; the one served at once never counted against the queue.
    let mut config = AppConfig::new("local-0003");
    config.slots = 1;
    config.max_queue = 1;
    config.service_time = Duration::from_millis(5);
    let app = start(config).await;
    for round in 0..50 {
        let pair: Vec<_> = (0..2)
            .map(|_| tokio::spawn(get(app.address, "/")))
            .collect();
        for request in pair {
            let (status, body) = request.await.unwrap();
            assert_eq!(status, 200, "round {round}: {body}");
        }
    }
    app.stop.send(()).unwrap();
    app.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_requests_in_flight_finish_and_new_ones_are_not_taken() {
    let mut config = AppConfig::new("local-0002");
    // Long enough to be seen in flight even on a busy machine.
    config.service_time = Duration::from_secs(2);
    let app = start(config).await;
    let in_flight = tokio::spawn(get(app.address, "/"));
    let give_up = Instant::now() + Duration::from_secs(5);
    while stats(app.address).await.in_flight < 1 {
        assert!(Instant::now() < give_up, "the request never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop.send(()).unwrap();
    assert_eq!(
        in_flight.await.unwrap().0,
        200,
        "the request in flight finished"
    );
    tokio::time::timeout(Duration::from_secs(5), app.task)
        .await
        .expect("the app stops once its requests are done")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(app.address).await.is_err(),
        "nothing listens after the stop"
    );
}

#[test]
fn bad_settings_are_refused_with_the_setting_named() {
    let mut config = AppConfig::new("local-0001");
    config.cpu_time = Duration::from_millis(80);
    config.service_time = Duration::from_millis(50);
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("CPU time"), "{error}");
    let mut config = AppConfig::new("local-0001");
    config.slots = 0;
    assert!(config.validate().unwrap_err().to_string().contains("slots"));
    assert!(AppConfig::new(" ").validate().is_err());
}

/// Outside test, finding 6: a client that goes away mid-request (a timeout, a balancer that
/// died) gives its slot back and leaves no phantom load: in flight and queued fall to 0 and
/// the slot time stops growing. Before, each cancelled request stayed "in flight" for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_client_went_away_leave_no_load_behind() {
    let mut config = AppConfig::new("local-0009");
    config.slots = 2;
    config.service_time = Duration::from_millis(1_000);
    config.max_queue = 8;
    let app = start(config).await;

    // Five clients that give up after 200 ms: two hold slots, three wait for one.
    let clients: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(tokio::time::timeout(
                Duration::from_millis(200),
                get(app.address, "/"),
            ))
        })
        .collect();
    for client in clients {
        assert!(client.await.unwrap().is_err(), "the client gave up first");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let settled = loop {
        let now = stats(app.address).await;
        if (now.in_flight, now.queued) == (0, 0) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "cancelled requests still count: {} in flight, {} queued",
            now.in_flight,
            now.queued
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Nothing in flight: the slot time stands still.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = stats(app.address).await;
    assert_eq!(later.busy_seconds_total, settled.busy_seconds_total);
    // Both slots are free again: two requests are served at once.
    let started = Instant::now();
    let (a, b) = tokio::join!(get(app.address, "/"), get(app.address, "/"));
    assert_eq!((a.0, b.0), (200, 200));
    assert!(
        started.elapsed() < Duration::from_millis(1_900),
        "{:?}",
        started.elapsed()
    );

    app.stop.send(()).unwrap();
    app.task.await.unwrap().unwrap();
}
