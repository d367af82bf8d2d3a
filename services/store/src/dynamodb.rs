//! The store on AWS: one DynamoDB table per group (`autoscaler-<group>`, made by `cargo xtask up`),
//! after the pattern of the DynamoDB lock client. The lease item carries a record version (a
//! random value changed at every renewal); a standby takes the lease over only once it has seen
//! the same version for a whole lease duration by its own monotonic clock, so no two hosts' wall
//! clocks are compared, and every change of the lease is a conditional write on the version it
//! read. The memory and the activity history are written in transactions that check the writer's
//! epoch on the lease item.
//!
//! Items: the lease (`pk = "lease"`), the policy's memory (`pk = "memory"`), one item per
//! decision record (`pk = "activity"`, `sk` = time, epoch and sequence, so that a query reads
//! them in time order), one per minute of demand (`pk = "demand"`, `sk` = its time) and one per
//! named document (`pk = "document"`, `sk` = its name).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, KeySchemaElement, KeyType,
    Put, ScalarAttributeType, TransactWriteItem,
};

use autoscaler_policy::time::now_ms;

use crate::{Activity, DemandSample, Lease, Pending, Store, StoreError};

/// The sort key of the items that are one of a kind.
const ONLY: &str = "-";

/// The most records one transaction writes (DynamoDB allows 100 items, one is the check).
const BATCH: usize = 99;

type Item = HashMap<String, AttributeValue>;

fn unavailable(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {error}"))
}

fn key(pk: &str, sk: &str) -> Item {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(pk.to_string())),
        ("sk".to_string(), AttributeValue::S(sk.to_string())),
    ])
}

fn text(item: &Item, name: &str) -> Option<String> {
    item.get(name)?.as_s().ok().cloned()
}

fn number(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn n(value: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A fresh record version.
fn version() -> Result<String, StoreError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|error| unavailable("a random version", error))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn conditional_failed(error: &impl ProvideErrorMetadata) -> bool {
    matches!(
        error.code(),
        Some("ConditionalCheckFailedException" | "TransactionCanceledException")
    )
}

/// The lease item as read: the lease, its record version, its duration, whether it was given up.
#[derive(Debug)]
struct LeaseItem {
    lease: Lease,
    version: String,
    duration: Duration,
    released: bool,
}

impl LeaseItem {
    fn read(item: &Item) -> Result<LeaseItem, StoreError> {
        let field = |name: &str| StoreError::Corrupt(format!("the lease item has no {name}"));
        Ok(LeaseItem {
            lease: Lease {
                holder: text(item, "holder").ok_or_else(|| field("holder"))?,
                epoch: number(item, "epoch")
                    .and_then(|e| u64::try_from(e).ok())
                    .ok_or_else(|| field("epoch"))?,
                address: text(item, "address").unwrap_or_default(),
                expires_at_ms: number(item, "expires_at_ms").unwrap_or(0),
            },
            version: text(item, "rvn").ok_or_else(|| field("rvn"))?,
            duration: Duration::from_millis(
                number(item, "duration_ms")
                    .and_then(|d| u64::try_from(d).ok())
                    .unwrap_or(0),
            ),
            released: item
                .get("released")
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false),
        })
    }
}

/// What this store object saw of the lease: the version it last wrote as the holder, and the
/// version another holder showed it, since when.
#[derive(Debug, Default)]
struct Seen {
    mine: Option<String>,
    theirs: Option<(String, Instant)>,
}

/// The group's store in a DynamoDB table.
#[derive(Debug)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    seen: Mutex<Seen>,
}

impl DynamoStore {
    pub fn new(sdk: &aws_config::SdkConfig, table: &str) -> DynamoStore {
        DynamoStore {
            client: aws_sdk_dynamodb::Client::new(sdk),
            table: table.to_string(),
            seen: Mutex::default(),
        }
    }

    /// The table's name for `group`.
    pub fn table_name(group: &str) -> String {
        format!("autoscaler-{group}")
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the table (on demand billing) unless it exists; returns whether it made it.
    pub async fn ensure_table(&self) -> Result<bool, StoreError> {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| unavailable("a key attribute", e))
        };
        let key_part = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| unavailable("a key schema", e))
        };
        match self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attribute("pk")?)
            .attribute_definitions(attribute("sk")?)
            .key_schema(key_part("pk", KeyType::Hash)?)
            .key_schema(key_part("sk", KeyType::Range)?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if error.code() == Some("ResourceInUseException") => Ok(false),
            Err(error) => Err(unavailable(
                "create the table",
                aws_sdk_dynamodb::error::DisplayErrorContext(error),
            )),
        }
    }

    /// Whether the table exists.
    pub async fn table_exists(&self) -> Result<bool, StoreError> {
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if error.code() == Some("ResourceNotFoundException") => Ok(false),
            Err(error) => Err(unavailable(
                "describe the table",
                aws_sdk_dynamodb::error::DisplayErrorContext(error),
            )),
        }
    }

    /// Deletes the table (`down --purge`); a missing one is fine.
    pub async fn delete_table(&self) -> Result<(), StoreError> {
        match self
            .client
            .delete_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some("ResourceNotFoundException") => Ok(()),
            Err(error) => Err(unavailable(
                "delete the table",
                aws_sdk_dynamodb::error::DisplayErrorContext(error),
            )),
        }
    }

    async fn lease_item(&self) -> Result<Option<LeaseItem>, StoreError> {
        let answer = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key("lease", ONLY)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                unavailable(
                    "read the lease",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e),
                )
            })?;
        answer.item().map(LeaseItem::read).transpose()
    }

    /// Writes the lease as `lease` with a new version, if the item still has version `was`
    /// (none: if there is no item). `None` if another write came first.
    async fn write_lease(
        &self,
        lease: &Lease,
        duration: Duration,
        was: Option<&str>,
    ) -> Result<Option<Lease>, StoreError> {
        let rvn = version()?;
        let mut item = key("lease", ONLY);
        item.insert("holder".into(), AttributeValue::S(lease.holder.clone()));
        item.insert("epoch".into(), n(lease.epoch));
        item.insert("address".into(), AttributeValue::S(lease.address.clone()));
        item.insert("rvn".into(), AttributeValue::S(rvn.clone()));
        item.insert("duration_ms".into(), n(duration.as_millis()));
        item.insert("expires_at_ms".into(), n(lease.expires_at_ms));
        item.insert("released".into(), AttributeValue::Bool(false));
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        put = match was {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(was) => put
                .condition_expression("rvn = :was")
                .expression_attribute_values(":was", AttributeValue::S(was.to_string())),
        };
        match put.send().await {
            Ok(_) => {
                self.seen().mine = Some(rvn);
                Ok(Some(lease.clone()))
            }
            Err(error) if conditional_failed(&error) => Ok(None),
            Err(error) => Err(unavailable(
                "write the lease",
                aws_sdk_dynamodb::error::DisplayErrorContext(error),
            )),
        }
    }

    /// Writes `item` if the lease's epoch is still `epoch`, in one transaction per batch.
    async fn fenced_puts(&self, epoch: u64, items: Vec<Item>) -> Result<(), StoreError> {
        for batch in items.chunks(BATCH) {
            let check = ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(key("lease", ONLY)))
                .condition_expression("epoch = :epoch")
                .expression_attribute_values(":epoch", n(epoch))
                .build()
                .map_err(|e| unavailable("a condition", e))?;
            let mut transaction = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().condition_check(check).build());
            for item in batch {
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item.clone()))
                    .build()
                    .map_err(|e| unavailable("a write", e))?;
                transaction =
                    transaction.transact_items(TransactWriteItem::builder().put(put).build());
            }
            match transaction.send().await {
                Ok(_) => {}
                Err(error) if conditional_failed(&error) => {
                    let current = self.lease_item().await?.map_or(0, |l| l.lease.epoch);
                    return Err(StoreError::Fenced {
                        writer: epoch,
                        current,
                    });
                }
                Err(error) => {
                    return Err(unavailable(
                        "write",
                        aws_sdk_dynamodb::error::DisplayErrorContext(error),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Store for DynamoStore {
    fn acquire<'a>(
        &'a self,
        holder: &'a str,
        address: &'a str,
        duration: Duration,
    ) -> Pending<'a, Option<Lease>> {
        Box::pin(async move {
            let expires_at_ms = now_ms().saturating_add(duration.as_millis() as i64);
            let Some(current) = self.lease_item().await? else {
                let lease = Lease {
                    holder: holder.to_string(),
                    epoch: 1,
                    address: address.to_string(),
                    expires_at_ms,
                };
                return self.write_lease(&lease, duration, None).await;
            };
            let mine = self.seen().mine.clone();
            let renewal = current.lease.holder == holder
                && mine.as_deref() == Some(current.version.as_str())
                && !current.released;
            if renewal {
                let lease = Lease {
                    address: address.to_string(),
                    expires_at_ms,
                    ..current.lease.clone()
                };
                return self
                    .write_lease(&lease, duration, Some(&current.version))
                    .await;
            }
            // Another's: taken over once given up, or once its version stood still for a
            // whole lease duration, by this process's clock.
            let run_out = current.released || {
                let mut seen = self.seen();
                match &seen.theirs {
                    Some((version, since)) if *version == current.version => {
                        since.elapsed() >= current.duration
                    }
                    _ => {
                        seen.theirs = Some((current.version.clone(), Instant::now()));
                        false
                    }
                }
            };
            if !run_out {
                return Ok(None);
            }
            let lease = Lease {
                holder: holder.to_string(),
                epoch: current.lease.epoch.saturating_add(1),
                address: address.to_string(),
                expires_at_ms,
            };
            self.write_lease(&lease, duration, Some(&current.version))
                .await
        })
    }

    fn release<'a>(&'a self, holder: &'a str, epoch: u64) -> Pending<'a, ()> {
        Box::pin(async move {
            let released = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key("lease", ONLY)))
                .update_expression("SET released = :yes, rvn = :rvn")
                .condition_expression("holder = :holder AND epoch = :epoch")
                .expression_attribute_values(":yes", AttributeValue::Bool(true))
                .expression_attribute_values(":rvn", AttributeValue::S(version()?))
                .expression_attribute_values(":holder", AttributeValue::S(holder.to_string()))
                .expression_attribute_values(":epoch", n(epoch))
                .send()
                .await;
            match released {
                Ok(_) => {
                    self.seen().mine = None;
                    Ok(())
                }
                Err(error) if conditional_failed(&error) => Ok(()),
                Err(error) => Err(unavailable(
                    "give the lease up",
                    aws_sdk_dynamodb::error::DisplayErrorContext(error),
                )),
            }
        })
    }

    fn lease(&self) -> Pending<'_, Option<Lease>> {
        Box::pin(async move {
            Ok(self.lease_item().await?.map(|item| {
                let mut lease = item.lease;
                if item.released {
                    lease.expires_at_ms = 0;
                }
                lease
            }))
        })
    }

    fn save_memory<'a>(&'a self, epoch: u64, memory: &'a [u8]) -> Pending<'a, ()> {
        Box::pin(async move {
            let mut item = key("memory", ONLY);
            item.insert("epoch".into(), n(epoch));
            item.insert("body".into(), AttributeValue::B(Blob::new(memory.to_vec())));
            self.fenced_puts(epoch, vec![item]).await
        })
    }

    fn memory(&self) -> Pending<'_, Option<Vec<u8>>> {
        Box::pin(self.body_of("memory", ONLY, "read the memory"))
    }

    fn append<'a>(&'a self, epoch: u64, records: &'a [Activity]) -> Pending<'a, ()> {
        Box::pin(async move {
            let mut items = Vec::with_capacity(records.len());
            for record in records {
                // The same record written again (epoch and sequence, and its first time) has the
                // same key: the put replaces it.
                let sk = format!(
                    "{:020}-{:020}-{:020}",
                    record.at_ms.max(0),
                    record.epoch,
                    record.sequence
                );
                let mut item = key("activity", &sk);
                item.insert("at_ms".into(), n(record.at_ms));
                item.insert("epoch".into(), n(record.epoch));
                item.insert("sequence".into(), n(record.sequence));
                item.insert(
                    "body".into(),
                    AttributeValue::B(Blob::new(record.body.clone())),
                );
                items.push(item);
            }
            self.fenced_puts(epoch, items).await
        })
    }

    fn activity(&self, since_ms: i64, limit: usize) -> Pending<'_, Vec<Activity>> {
        Box::pin(async move {
            let mut found = Vec::new();
            let mut pages = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk >= :since")
                .expression_attribute_values(":pk", AttributeValue::S("activity".into()))
                .expression_attribute_values(
                    ":since",
                    AttributeValue::S(format!("{:020}", since_ms.max(0))),
                )
                .scan_index_forward(false)
                .into_paginator()
                .items()
                .send();
            while found.len() < limit {
                match pages.next().await {
                    Some(Ok(item)) => found.push(Activity {
                        at_ms: number(&item, "at_ms").unwrap_or(0),
                        epoch: number(&item, "epoch")
                            .and_then(|e| u64::try_from(e).ok())
                            .unwrap_or(0),
                        sequence: number(&item, "sequence")
                            .and_then(|e| u64::try_from(e).ok())
                            .unwrap_or(0),
                        body: item
                            .get("body")
                            .and_then(|b| b.as_b().ok())
                            .map(|b| b.as_ref().to_vec())
                            .unwrap_or_default(),
                    }),
                    Some(Err(error)) => {
                        return Err(unavailable(
                            "read the activity history",
                            aws_sdk_dynamodb::error::DisplayErrorContext(error),
                        ));
                    }
                    None => break,
                }
            }
            found.reverse();
            Ok(found)
        })
    }

    fn prune(&self, before_ms: i64) -> Pending<'_, u64> {
        Box::pin(self.delete_before("activity", before_ms))
    }

    fn record_demand<'a>(&'a self, epoch: u64, samples: &'a [DemandSample]) -> Pending<'a, ()> {
        Box::pin(async move {
            let items = samples
                .iter()
                .map(|sample| {
                    let mut item = key("demand", &format!("{:020}", sample.at_ms.max(0)));
                    item.insert("at_ms".into(), n(sample.at_ms));
                    item.insert("capacities".into(), n(sample.capacities));
                    item
                })
                .collect();
            self.fenced_puts(epoch, items).await
        })
    }

    fn demand(&self, since_ms: i64) -> Pending<'_, Vec<DemandSample>> {
        Box::pin(async move {
            let mut pages = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk >= :since")
                .expression_attribute_values(":pk", AttributeValue::S("demand".into()))
                .expression_attribute_values(
                    ":since",
                    AttributeValue::S(format!("{:020}", since_ms.max(0))),
                )
                .into_paginator()
                .items()
                .send();
            let mut found = Vec::new();
            while let Some(item) = pages.next().await {
                let item = item.map_err(|e| {
                    unavailable(
                        "read the demand",
                        aws_sdk_dynamodb::error::DisplayErrorContext(e),
                    )
                })?;
                let capacities = item
                    .get("capacities")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<f64>().ok());
                if let (Some(at_ms), Some(capacities)) = (number(&item, "at_ms"), capacities) {
                    found.push(DemandSample { at_ms, capacities });
                }
            }
            Ok(found)
        })
    }

    fn prune_demand(&self, before_ms: i64) -> Pending<'_, u64> {
        Box::pin(self.delete_before("demand", before_ms))
    }

    fn save_document<'a>(&'a self, epoch: u64, name: &'a str, body: &'a [u8]) -> Pending<'a, ()> {
        Box::pin(async move {
            let mut item = key("document", name);
            item.insert("epoch".into(), n(epoch));
            item.insert("body".into(), AttributeValue::B(Blob::new(body.to_vec())));
            self.fenced_puts(epoch, vec![item]).await
        })
    }

    fn document<'a>(&'a self, name: &'a str) -> Pending<'a, Option<Vec<u8>>> {
        Box::pin(self.body_of("document", name, "read a document"))
    }
}

impl DynamoStore {
    /// The `body` of item (`pk`, `sk`), read consistently, if it is there.
    async fn body_of(&self, pk: &str, sk: &str, what: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let answer = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(what, aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        Ok(answer
            .item()
            .and_then(|item| item.get("body"))
            .and_then(|body| body.as_b().ok())
            .map(|blob| blob.as_ref().to_vec()))
    }

    /// Deletes the items of partition `pk` whose time-led sort key is before `before_ms`.
    async fn delete_before(&self, pk: &str, before_ms: i64) -> Result<u64, StoreError> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk < :before")
            .expression_attribute_values(":pk", AttributeValue::S(pk.into()))
            .expression_attribute_values(
                ":before",
                AttributeValue::S(format!("{:020}", before_ms.max(0))),
            )
            .projection_expression("pk, sk")
            .into_paginator()
            .items()
            .send();
        let mut deleted = 0;
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| {
                unavailable(
                    "read the old items",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e),
                )
            })?;
            let Some(sk) = text(&item, "sk") else {
                continue;
            };
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(pk, &sk)))
                .send()
                .await
                .map_err(|e| {
                    unavailable(
                        "delete an old item",
                        aws_sdk_dynamodb::error::DisplayErrorContext(e),
                    )
                })?;
            deleted += 1;
        }
        Ok(deleted)
    }
}
