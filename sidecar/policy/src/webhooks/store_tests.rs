//! The durable store on a real redb file: what is accepted is there after reopening, in the
//! state the last recorded attempt left it.

use std::time::Duration;

use super::{
    message::first_id_at,
    store::{
        Accepted, AfterAttempt, AttemptDone, AttemptRecord, Pending, ReplaySelector, Retention,
        Store, StoreError, attempt_records_cap,
    },
};

const MB: u64 = 1 << 20;

fn pending(id: u128, key: Option<&str>, endpoints: &[&str]) -> Pending {
    Pending {
        id,
        event_type: "invoice.paid".into(),
        payload: format!(r#"{{"n": {id}}}"#).into_bytes(),
        idempotency_key: key.map(str::to_owned),
        deliveries: endpoints.iter().map(|e| (e.to_string(), 1_000)).collect(),
    }
}

fn attempt(id: u128, endpoint: &str, number: u32, after: AfterAttempt) -> AttemptDone {
    AttemptDone {
        id,
        endpoint: endpoint.into(),
        number,
        record: AttemptRecord {
            at_ms: 2_000,
            result: "5xx".into(),
            status: Some(503),
            latency_ms: 1.0,
            error: Some("HTTP 503".into()),
            response: None,
        },
        after,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Ids at increasing times, as the outbox makes them.
fn id(ms: u64, n: u128) -> u128 {
    first_id_at(ms) + n
}

#[test]
fn accepted_messages_and_their_state_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("webhooks.redb");
    let (a, b) = (id(1_000, 1), id(1_000, 2));
    runtime().block_on(async {
        let (store, recovered) = Store::open(&path, 64 * MB, Retention::default()).unwrap();
        assert!(recovered.pending.is_empty());
        let accepted = store
            .accept(vec![
                pending(a, None, &["ns/x", "ns/y"]),
                pending(b, None, &["ns/x"]),
            ])
            .await
            .unwrap();
        assert_eq!(accepted, [Accepted::New(a), Accepted::New(b)]);
        store.record(attempt(a, "ns/x", 1, AfterAttempt::Delivered));
        store.record(attempt(b, "ns/x", 1, AfterAttempt::Retry { at_ms: 9_000 }));
        store.flush().await.unwrap();
    });
    let (store, recovered) = Store::open(&path, 64 * MB, Retention::default()).unwrap();
    let mut pending: Vec<(String, u128, u64, u32)> = recovered
        .pending
        .into_iter()
        .map(|d| (d.endpoint, d.id, d.due_ms, d.attempts))
        .collect();
    pending.sort();
    assert_eq!(
        pending,
        [("ns/x".into(), b, 9_000, 1), ("ns/y".into(), a, 1_000, 0)]
    );
    // `a` still has a delivery pending: its payload stays until that one is done.
    assert!(store.message(a).unwrap().is_some());
    runtime().block_on(async {
        store.record(attempt(a, "ns/y", 1, AfterAttempt::Delivered));
        store.flush().await.unwrap();
    });
    assert!(
        store.message(a).unwrap().is_none(),
        "delivered everywhere: removed"
    );
    assert_eq!(store.attempts(a).unwrap().len(), 2);
}

#[test]
fn an_idempotency_key_is_stored_once_even_within_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) =
        Store::open(&dir.path().join("w.redb"), 64 * MB, Retention::default()).unwrap();
    let (a, b, c) = (id(1_000, 1), id(1_000, 2), id(1_000, 3));
    runtime().block_on(async {
        let accepted = store
            .accept(vec![
                pending(a, Some("k"), &["ns/x"]),
                pending(b, Some("k"), &["ns/x"]),
            ])
            .await
            .unwrap();
        assert_eq!(accepted, [Accepted::New(a), Accepted::Duplicate(a)]);
        let again = store
            .accept(vec![pending(c, Some("k"), &["ns/x"])])
            .await
            .unwrap();
        assert_eq!(again, [Accepted::Duplicate(a)]);
    });
    assert!(store.message(b).unwrap().is_none());
}

#[test]
fn dead_letters_are_listed_in_order_and_replayed_by_id_or_time() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) =
        Store::open(&dir.path().join("w.redb"), 64 * MB, Retention::default()).unwrap();
    let ids = [id(1_000, 0), id(2_000, 0), id(3_000, 0)];
    runtime().block_on(async {
        store
            .accept(ids.iter().map(|&i| pending(i, None, &["ns/x"])).collect())
            .await
            .unwrap();
        for &i in &ids {
            store.record(attempt(
                i,
                "ns/x",
                3,
                AfterAttempt::Dead {
                    reason: "gone".into(),
                },
            ));
        }
        store.flush().await.unwrap();
        let listed: Vec<u128> = store
            .dead_letters("ns/x", None, 10)
            .unwrap()
            .iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(listed, ids);
        let page = store.dead_letters("ns/x", Some(ids[0]), 1).unwrap();
        assert_eq!(page[0].id, ids[1]);
        assert_eq!(page[0].state.attempts, 3);
        assert_eq!(page[0].state.last_error.as_deref(), Some("gone"));

        let one = store
            .replay("ns/x", ReplaySelector::One(ids[0]), 5_000)
            .await
            .unwrap();
        assert_eq!(one, [ids[0]]);
        let since = store
            .replay("ns/x", ReplaySelector::Since { unix_ms: 2_500 }, 5_000)
            .await
            .unwrap();
        assert_eq!(since, [ids[2]]);
        assert_eq!(store.dead_letters("ns/x", None, 10).unwrap().len(), 1);
        let state = store.delivery(ids[2], "ns/x").unwrap().unwrap();
        assert_eq!(
            (state.attempts, state.next_at_ms, state.dead_at_ms),
            (0, 5_000, None)
        );
    });
}

#[test]
fn retention_removes_old_records_and_keys_but_not_pending_work() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        attempts: Duration::from_secs(10),
        dead_letters: Duration::from_secs(10),
        idempotency: Duration::from_secs(10),
    };
    let (store, _) = Store::open(&dir.path().join("w.redb"), 64 * MB, retention).unwrap();
    let (old_dead, old_pending, recent) = (id(1_000, 0), id(1_000, 1), id(50_000, 0));
    runtime().block_on(async {
        store
            .accept(vec![
                pending(old_dead, Some("old"), &["ns/x"]),
                pending(old_pending, None, &["ns/x"]),
                pending(recent, Some("new"), &["ns/x"]),
            ])
            .await
            .unwrap();
        store.record(attempt(
            old_dead,
            "ns/x",
            1,
            AfterAttempt::Dead {
                reason: "4xx".into(),
            },
        ));
        store.record(attempt(
            recent,
            "ns/x",
            1,
            AfterAttempt::Retry { at_ms: 60_000 },
        ));
        let counts = store.sweep(55_000).await.unwrap();
        assert_eq!(
            (
                counts.dead_letters,
                counts.idempotency_keys,
                counts.attempts
            ),
            (1, 1, 1)
        );
        assert!(store.message(old_dead).unwrap().is_none());
        assert!(
            store.message(old_pending).unwrap().is_some(),
            "pending work is never swept"
        );
        assert_eq!(store.attempts(recent).unwrap().len(), 1);
        // The expired key may be used again; the recent one still deduplicates.
        let again = store
            .accept(vec![
                pending(id(55_000, 0), Some("old"), &["ns/x"]),
                pending(id(55_000, 1), Some("new"), &["ns/x"]),
            ])
            .await
            .unwrap();
        assert_eq!(
            again,
            [Accepted::New(id(55_000, 0)), Accepted::Duplicate(recent)]
        );
    });
}

#[test]
fn a_full_store_refuses_new_messages_keeps_the_old_ones_and_makes_room_as_they_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.redb");
    let (store, _) = Store::open(&path, 8 * MB, Retention::default()).unwrap();
    let blob = |n: u128| Pending {
        payload: vec![b'x'; 60_000],
        ..pending(id(1_000, n), None, &["ns/x"])
    };
    let rt = runtime();
    let mut kept = Vec::new();
    let refused = rt.block_on(async {
        for n in 0..1_000 {
            match store.accept(vec![blob(n)]).await {
                Ok(_) => kept.push(id(1_000, n)),
                Err(e) => return e,
            }
        }
        panic!("8 MiB held 1000 messages of 60 kB");
    });
    assert!(matches!(refused, StoreError::Full(_)), "{refused:?}");
    // The file never passes the limit, and holds at least about half of it before it refuses.
    let file = std::fs::metadata(&path).unwrap().len();
    let held = kept.len() as u64 * 60_000;
    assert!(file <= 8 * MB, "the file grew to {file} bytes");
    assert!(held > 8 * MB * 4 / 10, "only {held} bytes held in {file}");
    for &id in &kept {
        assert!(store.message(id).unwrap().is_some());
    }

    // Delivered, they make room again: the file is as long as before, its pages free.
    for &id in &kept {
        store.record(attempt(id, "ns/x", 1, AfterAttempt::Delivered));
    }
    let started = std::time::Instant::now();
    let again = rt.block_on(async {
        loop {
            match store.accept(vec![blob(5_000)]).await {
                Ok(accepted) => return accepted,
                Err(StoreError::Full(_)) if started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("still refused once every message was delivered: {e}"),
            }
        }
    });
    assert_eq!(again, vec![Accepted::New(id(1_000, 5_000))]);
    assert!(store.message(kept[0]).unwrap().is_none());
}

#[test]
fn attempt_records_are_capped_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("w.redb"), MB, Retention::default()).unwrap();
    let cap = attempt_records_cap(MB);
    let messages = cap + cap / 10 + 1;
    runtime().block_on(async {
        let all: Vec<_> = (0..messages)
            .map(|n| pending(id(1_000, n.into()), None, &["ns/x"]))
            .collect();
        store.accept(all).await.unwrap();
        for n in 0..messages {
            let retry = AfterAttempt::Retry { at_ms: 10_000 };
            store.record(attempt(id(1_000, n.into()), "ns/x", 1, retry));
        }
        store.flush().await.unwrap();
    });
    assert!(store.attempts(id(1_000, 0)).unwrap().is_empty());
    let newest = id(1_000, (messages - 1).into());
    assert_eq!(store.attempts(newest).unwrap().len(), 1);
    let kept = (0..messages)
        .filter(|&n| !store.attempts(id(1_000, n.into())).unwrap().is_empty())
        .count() as u64;
    assert_eq!(kept, cap);
}

#[test]
fn counts_add_up_each_endpoints_attempts_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.redb");
    let (a, b) = (id(1_000, 0), id(1_000, 1));
    runtime().block_on(async {
        let (store, _) = Store::open(&path, 64 * MB, Retention::default()).unwrap();
        store
            .accept(vec![
                pending(a, None, &["ns/x"]),
                pending(b, None, &["ns/x"]),
            ])
            .await
            .unwrap();
        store.record(attempt(a, "ns/x", 1, AfterAttempt::Retry { at_ms: 3_000 }));
        store.record(attempt(a, "ns/x", 2, AfterAttempt::Delivered));
        store.record(attempt(
            b,
            "ns/x",
            1,
            AfterAttempt::Dead {
                reason: "410".into(),
            },
        ));
        store.flush().await.unwrap();
    });
    let (store, _) = Store::open(&path, 64 * MB, Retention::default()).unwrap();
    let counts = store.counts().unwrap();
    assert_eq!(
        counts["ns/x"],
        super::store::Counts {
            delivered: 1,
            failed_attempts: 2,
            dead_lettered: 1
        }
    );
}
