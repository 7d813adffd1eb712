//! The backend-independent test suite every [`Store`] must pass.
//!
//! A backend's test module instantiates it with [`store_suite!`], passing two
//! expressions that each build a fresh `(store, guard)` pair: one with default options and
//! one whose live watch buffer holds at most 8 events (for the lag test). The guard (for
//! example a temporary directory) lives as long as the test.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;

use super::{Error, Event, EventKind, KeyValue, Revision, Store, WatchStream};

/// A store under test.
pub(crate) type Shared = Arc<dyn Store>;

/// Instantiates every suite test for a backend.
macro_rules! store_suite {
    ($make:expr, $make_small_buffer:expr) => {
        #[tokio::test]
        async fn suite_crud() {
            let (store, _guard) = $make;
            super::super::suite::crud(std::sync::Arc::new(store)).await;
        }

        #[tokio::test]
        async fn suite_list_pagination() {
            let (store, _guard) = $make;
            super::super::suite::list_pagination(std::sync::Arc::new(store)).await;
        }

        #[tokio::test]
        async fn suite_revisions() {
            let (store, _guard) = $make;
            super::super::suite::revisions(std::sync::Arc::new(store)).await;
        }

        #[tokio::test]
        async fn suite_watch_events() {
            let (store, _guard) = $make;
            super::super::suite::watch_events(std::sync::Arc::new(store)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn suite_watch_replay_then_live() {
            let (store, _guard) = $make;
            super::super::suite::watch_replay_then_live(std::sync::Arc::new(store)).await;
        }

        #[tokio::test]
        async fn suite_watch_from_future() {
            let (store, _guard) = $make;
            super::super::suite::watch_from_future(std::sync::Arc::new(store)).await;
        }

        #[tokio::test]
        async fn suite_compaction() {
            let (store, _guard) = $make;
            super::super::suite::compaction(std::sync::Arc::new(store)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn suite_concurrent_writers() {
            let (store, _guard) = $make;
            super::super::suite::concurrent_writers(std::sync::Arc::new(store)).await;
        }

        #[tokio::test]
        async fn suite_lagged() {
            let (store, _guard) = $make_small_buffer;
            super::super::suite::lagged(std::sync::Arc::new(store)).await;
        }
    };
}
pub(crate) use store_suite;

const TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The next event of a watch, failing the test on timeout, end or error.
pub(crate) async fn next_event(watch: &mut WatchStream) -> Event {
    match tokio::time::timeout(TIMEOUT, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("timed out waiting for a watch event"),
    }
}

/// Asserts that no event arrives for a short while.
pub(crate) async fn assert_quiet(watch: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(150), watch.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

fn kv(key: &str, value: &str, create: Revision, modr: Revision) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: bytes(value),
        create_revision: create,
        mod_revision: modr,
    }
}

pub(crate) async fn crud(s: Shared) {
    assert_eq!(s.current_revision().await.unwrap(), 0);
    assert_eq!(s.get("/a").await.unwrap(), None);

    let created = s.create("/a", bytes("one")).await.unwrap();
    assert_eq!(created, kv("/a", "one", 1, 1));
    assert!(matches!(
        s.create("/a", bytes("again")).await,
        Err(Error::AlreadyExists(k)) if k == "/a"
    ));
    assert_eq!(s.get("/a").await.unwrap(), Some(created.clone()));

    match s.update("/a", 7, bytes("two")).await {
        Err(Error::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!((key.as_str(), expected), ("/a", 7));
            assert_eq!(*current, created);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let updated = s.update("/a", 1, bytes("two")).await.unwrap();
    assert_eq!(updated, kv("/a", "two", 1, 2));
    assert_eq!(s.get("/a").await.unwrap(), Some(updated.clone()));

    assert!(matches!(
        s.delete("/a", Some(1)).await,
        Err(Error::Conflict { expected: 1, ref current, .. }) if current.mod_revision == 2
    ));
    let deleted = s.delete("/a", Some(2)).await.unwrap();
    assert_eq!(deleted, kv("/a", "two", 1, 3));
    assert_eq!(s.get("/a").await.unwrap(), None);

    assert!(matches!(s.update("/a", 3, bytes("x")).await, Err(Error::NotFound(k)) if k == "/a"));
    assert!(matches!(
        s.delete("/a", None).await,
        Err(Error::NotFound(_))
    ));

    // Re-creating starts a new lifetime; an unconditional delete works.
    let again = s.create("/a", bytes("three")).await.unwrap();
    assert_eq!(again, kv("/a", "three", 4, 4));
    let deleted = s.delete("/a", None).await.unwrap();
    assert_eq!(deleted, kv("/a", "three", 4, 5));

    // Empty values and unusual keys round-trip.
    let empty = s.create("/e/ü/\u{0}", Bytes::new()).await.unwrap();
    assert_eq!(s.get("/e/ü/\u{0}").await.unwrap(), Some(empty));
    assert_eq!(s.current_revision().await.unwrap(), 6);
}

pub(crate) async fn list_pagination(s: Shared) {
    let mut expected = Vec::new();
    for i in 0..25 {
        let key = format!("/pods/ns/p{i:02}");
        expected.push(s.create(&key, bytes(&key)).await.unwrap());
    }
    s.create("/pods/nt/other", bytes("x")).await.unwrap();
    s.create("/pods/n", bytes("x")).await.unwrap();
    s.create("/pod", bytes("x")).await.unwrap();
    s.create("/q", bytes("x")).await.unwrap();
    let head = s.current_revision().await.unwrap();

    let all = s.list("/pods/ns/", None, 0).await.unwrap();
    assert_eq!(all.items, expected);
    assert!(!all.more);
    assert_eq!(all.revision, head);

    // Pages of 10 with continuation.
    let mut got = Vec::new();
    let mut start_after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s
            .list("/pods/ns/", start_after.as_deref(), 10)
            .await
            .unwrap();
        pages += 1;
        assert!(page.items.len() <= 10);
        assert_eq!(page.revision, head);
        got.extend(page.items.iter().cloned());
        if !page.more {
            break;
        }
        start_after = page.items.last().map(|kv| kv.key.clone());
    }
    assert_eq!(pages, 3);
    assert_eq!(got, expected);

    // An exact fit has no more.
    let page = s.list("/pods/ns/", Some("/pods/ns/p14"), 10).await.unwrap();
    assert_eq!(page.items, expected[15..]);
    assert!(!page.more);
    let page = s.list("/pods/ns/", None, 25).await.unwrap();
    assert_eq!(page.items.len(), 25);
    assert!(!page.more);
    let page = s.list("/pods/ns/", None, 24).await.unwrap();
    assert!(page.more);

    // start_after before the prefix starts at the prefix; after it yields nothing.
    let page = s.list("/pods/ns/", Some("/a"), 0).await.unwrap();
    assert_eq!(page.items, expected);
    let page = s.list("/pods/ns/", Some("/pods/nt"), 0).await.unwrap();
    assert!(page.items.is_empty());
    assert!(!page.more);

    // Prefix boundaries are bytewise.
    let keys = |items: Vec<KeyValue>| items.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    let page = s.list("/pods/n", None, 0).await.unwrap();
    assert_eq!(page.items.len(), 27);
    assert_eq!(page.items[0].key, "/pods/n");
    assert_eq!(keys(s.list("/po", None, 0).await.unwrap().items).len(), 28);
    assert_eq!(
        keys(s.list("", None, 2).await.unwrap().items),
        ["/pod", "/pods/n"]
    );
    assert!(s.list("/none/", None, 0).await.unwrap().items.is_empty());
}

pub(crate) async fn revisions(s: Shared) {
    let fixed = s.create("/fixed", bytes("v")).await.unwrap();
    let mut last = s.current_revision().await.unwrap();
    assert_eq!(last, fixed.mod_revision);
    for i in 0..10 {
        let key = format!("/r/{}", i % 3);
        let result = match s.get(&key).await.unwrap() {
            Some(kv) if i % 4 == 0 => s.delete(&key, Some(kv.mod_revision)).await,
            Some(kv) => s.update(&key, kv.mod_revision, bytes("v")).await,
            None => s.create(&key, bytes("v")).await,
        };
        let written = result.unwrap();
        assert_eq!(written.mod_revision, last + 1);
        last = written.mod_revision;
        assert_eq!(s.current_revision().await.unwrap(), last);
        // Failed writes do not consume revisions.
        s.create("/fixed", bytes("dup")).await.unwrap_err();
        s.update("/r/missing", 1, bytes("x")).await.unwrap_err();
        s.update("/fixed", last, bytes("x")).await.unwrap_err();
        s.delete("/fixed", Some(u64::MAX)).await.unwrap_err();
        s.delete("/r/missing", None).await.unwrap_err();
        assert_eq!(s.current_revision().await.unwrap(), last);
        assert_eq!(s.list("/r/", None, 0).await.unwrap().revision, last);
    }
}

pub(crate) async fn watch_events(s: Shared) {
    s.create("/e/a", bytes("v1")).await.unwrap();
    s.update("/e/a", 1, bytes("v2")).await.unwrap();
    s.create("/f/x", bytes("other")).await.unwrap();
    s.delete("/e/a", None).await.unwrap();

    let expected = vec![
        Event {
            kind: EventKind::Put,
            kv: kv("/e/a", "v1", 1, 1),
            prev: None,
        },
        Event {
            kind: EventKind::Put,
            kv: kv("/e/a", "v2", 1, 2),
            prev: Some(kv("/e/a", "v1", 1, 1)),
        },
        Event {
            kind: EventKind::Delete,
            kv: kv("/e/a", "v2", 1, 4),
            prev: Some(kv("/e/a", "v2", 1, 2)),
        },
    ];
    let mut w = s.watch("/e/", 0).await.unwrap();
    for e in &expected {
        assert_eq!(&next_event(&mut w).await, e);
    }
    assert_quiet(&mut w).await;

    // Replay from the middle.
    let mut mid = s.watch("/e/", 2).await.unwrap();
    assert_eq!(next_event(&mut mid).await, expected[2]);

    // All keys.
    let mut all = s.watch("", 0).await.unwrap();
    let revisions: Vec<_> = [
        next_event(&mut all).await,
        next_event(&mut all).await,
        next_event(&mut all).await,
        next_event(&mut all).await,
    ]
    .iter()
    .map(Event::revision)
    .collect();
    assert_eq!(revisions, [1, 2, 3, 4]);

    // Live events reach every matching watcher.
    let created = s.create("/e/b", bytes("live")).await.unwrap();
    s.create("/g/ignored", bytes("x")).await.unwrap();
    let live = Event {
        kind: EventKind::Put,
        kv: created,
        prev: None,
    };
    assert_eq!(next_event(&mut w).await, live);
    assert_eq!(next_event(&mut mid).await, live);
    assert_eq!(next_event(&mut all).await, live);
    assert_eq!(next_event(&mut all).await.kv.key, "/g/ignored");
    assert_quiet(&mut w).await;
    assert_quiet(&mut all).await;

    // A watch at the head sees only what comes next.
    let head = s.current_revision().await.unwrap();
    let mut fresh = s.watch("", head).await.unwrap();
    assert_quiet(&mut fresh).await;
    let deleted = s.delete("/e/b", None).await.unwrap();
    let event = next_event(&mut fresh).await;
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(event.kv, deleted);
}

/// Writers keep going while watches start, so the switch from replay to live happens
/// under load; every watcher must see exactly the matching events above its start.
pub(crate) async fn watch_replay_then_live(s: Shared) {
    for i in 0..40 {
        let prefix = if i % 2 == 0 { "/w/" } else { "/x/" };
        s.create(&format!("{prefix}pre{i}"), bytes("v"))
            .await
            .unwrap();
    }
    let writer = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..300 {
                let prefix = if i % 3 == 0 { "/x/" } else { "/w/" };
                let key = format!("{prefix}k{}", i % 17);
                let ack = match s.get(&key).await.unwrap() {
                    None => s.create(&key, bytes("v")).await.unwrap(),
                    Some(kv) if i % 5 == 0 => s.delete(&key, Some(kv.mod_revision)).await.unwrap(),
                    Some(kv) => s.update(&key, kv.mod_revision, bytes("v")).await.unwrap(),
                };
                acks.push(ack);
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            acks
        })
    };
    // Start watchers at various points while the writer runs.
    let mut watchers = Vec::new();
    for after in [0, 10, 39] {
        watchers.push((after, s.watch("/w/", after).await.unwrap()));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for _ in 0..4 {
        let after = s.current_revision().await.unwrap();
        watchers.push((after, s.watch("/w/", after).await.unwrap()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acks = writer.await.unwrap();
    let mut all_w: BTreeSet<Revision> = BTreeSet::new();
    for i in (0..40).step_by(2) {
        all_w.insert(i + 1);
    }
    for ack in &acks {
        if ack.key.starts_with("/w/") {
            all_w.insert(ack.mod_revision);
        }
    }
    for (after, mut watch) in watchers {
        let expected: Vec<Revision> = all_w.range(after + 1..).copied().collect();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            got.push(next_event(&mut watch).await.revision());
        }
        assert_eq!(got, expected, "watch after {after}");
        assert_quiet(&mut watch).await;
    }
}

pub(crate) async fn watch_from_future(s: Shared) {
    s.create("/a", bytes("1")).await.unwrap();
    let mut w = s.watch("/", 3).await.unwrap();
    s.create("/b", bytes("2")).await.unwrap();
    s.create("/c", bytes("3")).await.unwrap();
    assert_quiet(&mut w).await;
    let d = s.create("/d", bytes("4")).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv, d);
}

pub(crate) async fn compaction(s: Shared) {
    assert_eq!(s.compacted_revision(), 0);
    for i in 1..=5 {
        s.create(&format!("/c/{i}"), bytes("v")).await.unwrap();
    }
    s.compact(3).await.unwrap();
    assert_eq!(s.compacted_revision(), 3);
    match s.watch("/c/", 2).await {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (2, 3)),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("watch below the compaction point succeeded"),
    }
    // Exactly at the compaction point is fine.
    let mut w = s.watch("/c/", 3).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), 4);
    assert_eq!(next_event(&mut w).await.revision(), 5);

    // Compaction never goes backwards and is clamped to the head.
    s.compact(1).await.unwrap();
    assert_eq!(s.compacted_revision(), 3);
    s.compact(1000).await.unwrap();
    assert_eq!(s.compacted_revision(), 5);
    assert_eq!(s.current_revision().await.unwrap(), 5);
    assert!(matches!(
        s.watch("/c/", 4).await,
        Err(Error::Compacted { compacted: 5, .. })
    ));

    // Data survives compaction, and new writes continue the revision sequence.
    assert_eq!(s.list("/c/", None, 0).await.unwrap().items.len(), 5);
    let mut at_head = s.watch("/c/", 5).await.unwrap();
    let created = s.create("/c/6", bytes("v")).await.unwrap();
    assert_eq!(created.mod_revision, 6);
    assert_eq!(next_event(&mut at_head).await.kv, created);
    assert_eq!(next_event(&mut w).await.kv, created);
}

pub(crate) async fn concurrent_writers(s: Shared) {
    const WRITERS: usize = 64;
    const KEYS: usize = 4;
    const TOTAL: usize = WRITERS * KEYS * 2 + 2;
    // A watcher from the start, consuming while the writers run.
    let mut all = s.watch("", 0).await.unwrap();
    let watcher = tokio::spawn(async move {
        let mut events = Vec::new();
        while events.len() < TOTAL {
            events.push(next_event(&mut all).await);
        }
        assert_quiet(&mut all).await;
        events
    });
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for k in 0..KEYS {
                let key = format!("/cc/{t:02}/{k}");
                let created = s.create(&key, bytes("a")).await.unwrap();
                let updated = s
                    .update(&key, created.mod_revision, bytes("b"))
                    .await
                    .unwrap();
                assert!(updated.mod_revision > created.mod_revision);
                acks.push(created);
                acks.push(updated);
            }
            acks
        }));
    }
    // Racing compare-and-swaps on one key: exactly one wins.
    let base = s.create("/race", bytes("0")).await.unwrap();
    let mut racers = Vec::new();
    for i in 0..16 {
        let s = Arc::clone(&s);
        racers.push(tokio::spawn(async move {
            s.update("/race", base.mod_revision, bytes(&i.to_string()))
                .await
        }));
    }
    let mut wins = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(_) => wins += 1,
            Err(Error::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(wins, 1);

    let mut acked: BTreeMap<Revision, KeyValue> = BTreeMap::new();
    for task in tasks {
        for ack in task.await.unwrap() {
            assert!(
                acked.insert(ack.mod_revision, ack).is_none(),
                "revision handed out twice"
            );
        }
    }
    let head = s.current_revision().await.unwrap();
    assert_eq!(head, TOTAL as Revision);
    let listed = s.list("/cc/", None, 0).await.unwrap();
    assert_eq!(listed.items.len(), WRITERS * KEYS);
    for kv in &listed.items {
        assert_eq!(kv.value, bytes("b"));
        assert_eq!(acked.get(&kv.mod_revision), Some(kv));
    }
    // The watcher saw every revision exactly once, in order, matching the acks.
    let events = watcher.await.unwrap();
    for (event, revision) in events.iter().zip(1..) {
        assert_eq!(event.revision(), revision);
        if let Some(ack) = acked.get(&revision) {
            assert_eq!(&event.kv, ack);
        }
    }
}

/// Needs a store whose live buffer holds at most 8 events.
pub(crate) async fn lagged(s: Shared) {
    let mut slow = s.watch("/l/", 0).await.unwrap();
    s.create("/l/0", bytes("v")).await.unwrap();
    // Now live.
    assert_eq!(next_event(&mut slow).await.revision(), 1);
    for i in 1..100 {
        s.create(&format!("/l/{i}"), bytes("v")).await.unwrap();
    }
    let mut seen = 1;
    loop {
        match tokio::time::timeout(TIMEOUT, slow.next()).await {
            Ok(Some(Ok(event))) => {
                seen += 1;
                assert_eq!(event.revision(), seen, "no gaps before the lag is reported");
            }
            Ok(Some(Err(Error::Lagged))) => break,
            other => panic!("expected Lagged, got {other:?}"),
        }
    }
    assert!(seen < 100);
    assert!(slow.next().await.is_none(), "Lagged is the last item");
    // A new watcher catches up from history without lagging.
    let mut fresh = s.watch("/l/", 0).await.unwrap();
    for revision in 1..=100 {
        assert_eq!(next_event(&mut fresh).await.revision(), revision);
    }
}
