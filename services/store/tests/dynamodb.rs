//! The DynamoDB store against the emulator (moto server): the lease taken by one store at a time,
//! over by another only once its version stood still for a whole lease (or was given up), writes
//! fenced by the epoch, and the history read in time order, a record written again replacing the
//! first, and pruned; the demand and the named documents kept, fenced and pruned alike.

use std::time::{Duration, Instant};

use autoscaler_store::{Activity, DemandSample, DynamoStore, Store, StoreError};
use autoscaler_testkit::moto::start_moto;

fn record(at_ms: i64, epoch: u64, text: &str) -> Activity {
    Activity {
        at_ms,
        epoch,
        // One record per time in these tests.
        sequence: at_ms as u64,
        body: text.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_the_fence_and_the_history_on_dynamodb() {
    let moto = start_moto();
    let sdk = autoscaler_aws::emulator_config(&moto.endpoint, Default::default()).await;
    // Two daemons, two store objects, one table.
    let a = DynamoStore::new(&sdk, &DynamoStore::table_name("test"));
    let b = DynamoStore::new(&sdk, &DynamoStore::table_name("test"));
    assert!(a.ensure_table().await.unwrap(), "made");
    assert!(!b.ensure_table().await.unwrap(), "already there");
    let lease = Duration::from_millis(600);

    let first = a
        .acquire("a", "10.0.0.1:50051", lease)
        .await
        .unwrap()
        .expect("free");
    assert_eq!((first.holder.as_str(), first.epoch), ("a", 1));
    assert_eq!(b.acquire("b", "10.0.0.2:50051", lease).await.unwrap(), None);
    assert_eq!(
        a.acquire("a", "10.0.0.1:50051", lease)
            .await
            .unwrap()
            .unwrap()
            .epoch,
        1
    );
    a.append(1, &[record(1_000, 1, "a's first")]).await.unwrap();
    a.save_memory(1, b"a's memory").await.unwrap();

    // While a renews, b never takes the lease; once a stops, b takes it a lease later.
    let watching = Instant::now();
    let mut renewed = Instant::now();
    while watching.elapsed() < lease * 2 {
        a.acquire("a", "10.0.0.1:50051", lease)
            .await
            .unwrap()
            .expect("renewed");
        renewed = Instant::now();
        assert_eq!(b.acquire("b", "10.0.0.2:50051", lease).await.unwrap(), None);
        tokio::time::sleep(lease / 6).await;
    }
    let taken = loop {
        if let Some(lease) = b.acquire("b", "10.0.0.2:50051", lease).await.unwrap() {
            break lease;
        }
        assert!(
            renewed.elapsed() < Duration::from_secs(10),
            "b never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        renewed.elapsed() >= lease,
        "not before a whole lease after the last renewal: {:?}",
        renewed.elapsed()
    );
    assert_eq!((taken.holder.as_str(), taken.epoch), ("b", 2));

    // a comes back: no renewal, no write.
    assert_eq!(a.acquire("a", "10.0.0.1:50051", lease).await.unwrap(), None);
    assert_eq!(
        a.append(1, &[record(2_000, 1, "a, deposed")]).await,
        Err(StoreError::Fenced {
            writer: 1,
            current: 2
        })
    );
    assert!(matches!(
        a.save_memory(1, b"stale").await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(
        b.memory().await.unwrap().as_deref(),
        Some(&b"a's memory"[..])
    );
    let records: Vec<Activity> = (3..=7)
        .map(|n| record(n * 1_000, 2, &format!("b#{n}")))
        .collect();
    b.append(2, &records).await.unwrap();
    let history = b.activity(0, 100).await.unwrap();
    let texts: Vec<String> = history
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into())
        .collect();
    assert_eq!(texts, ["a's first", "b#3", "b#4", "b#5", "b#6", "b#7"]);
    // A record written again (quiet evaluations folded into it since) replaces the first.
    b.append(2, &[record(5_000, 2, "b#5, x3")]).await.unwrap();
    let texts: Vec<String> = b
        .activity(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into())
        .collect();
    assert_eq!(texts, ["a's first", "b#3", "b#4", "b#5, x3", "b#6", "b#7"]);
    let newest = b.activity(0, 2).await.unwrap();
    assert_eq!(newest.len(), 2);
    assert_eq!(newest[1].body, b"b#7");
    assert_eq!(b.prune(4_000).await.unwrap(), 2);
    assert_eq!(b.activity(0, 100).await.unwrap().len(), 4);

    // The demand (a minute's sample written again replaces it) and the documents: written by
    // the leader, read by anyone, refused to the deposed one, pruned by age.
    let sample = |minute: i64, capacities: f64| DemandSample {
        at_ms: minute * 60_000,
        capacities,
    };
    let minutes: Vec<DemandSample> = (0..150).map(|m| sample(m, m as f64 / 10.0)).collect();
    b.record_demand(2, &minutes).await.unwrap();
    b.record_demand(2, &[sample(3, 9.5)]).await.unwrap();
    assert!(matches!(
        a.record_demand(1, &[sample(4, 1.0)]).await,
        Err(StoreError::Fenced { .. })
    ));
    let read = a.demand(60_000).await.unwrap();
    assert_eq!(read.len(), 149);
    assert_eq!(read[2], sample(3, 9.5));
    assert_eq!(read[148], sample(149, 14.9));
    assert_eq!(b.prune_demand(100 * 60_000).await.unwrap(), 100);
    assert_eq!(a.demand(0).await.unwrap().len(), 50);
    b.save_document(2, "schedules", b"[1]").await.unwrap();
    assert!(matches!(
        a.save_document(1, "schedules", b"[]").await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(
        a.document("schedules").await.unwrap().as_deref(),
        Some(&b"[1]"[..])
    );
    assert_eq!(a.document("nothing").await.unwrap(), None);

    // A clean stop hands it over at once.
    b.release("b", 2).await.unwrap();
    assert_eq!(
        b.lease().await.unwrap().unwrap().expires_at_ms,
        0,
        "given up"
    );
    let next = a
        .acquire("a", "10.0.0.1:50051", lease)
        .await
        .unwrap()
        .expect("given up");
    assert_eq!(next.epoch, 3);
    assert!(a.table_exists().await.unwrap());
    a.delete_table().await.unwrap();
    a.delete_table().await.unwrap();
    assert!(!a.table_exists().await.unwrap());
}
