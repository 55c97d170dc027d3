//! Several replicas on one store, against a real S3 server (moto's server mode, started by the tests on
//! loopback; see tests/common/s3.rs): values are whole, conditional writes hold under racing clients, the
//! change journal stays dense, and a silent replica is seen dead.

mod common;

use common::s3::S3Server;
use skillgraft::store::blob::{is_conflict, Blobs, PutMode};
use skillgraft::store::journal::{Journal, Since};
use skillgraft::store::object::ObjectBlobs;
use skillgraft::store::replicas::Replicas;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn open(s3: &S3Server, prefix: &str) -> Arc<dyn Blobs> {
    Arc::new(ObjectBlobs::open_with(&s3.url(prefix), &s3.env()).expect("open the bucket"))
}

#[test]
fn object_storage_values_are_whole_and_conditional_writes_hold_under_racing_clients() {
    let s3 = S3Server::start("sg-blobs");
    let a = open(&s3, "fleet/one");
    let other_prefix = open(&s3, "fleet/two");

    let v1 = a.put("tasks/t.graft", b"one", PutMode::Create).unwrap();
    let e = a.put("tasks/t.graft", b"two", PutMode::Create).unwrap_err();
    assert!(is_conflict(&e), "create over an existing value: {e:#}");
    let v2 = a
        .put("tasks/t.graft", b"two", PutMode::Update(v1.clone()))
        .unwrap();
    let e = a
        .put("tasks/t.graft", b"three", PutMode::Update(v1))
        .unwrap_err();
    assert!(is_conflict(&e), "update of a stale version: {e:#}");
    assert_eq!(a.get("tasks/t.graft").unwrap(), Some((b"two".to_vec(), v2)));
    assert!(
        other_prefix.get("tasks/t.graft").unwrap().is_none(),
        "prefixes are separate"
    );
    assert!(a.get("tasks/none.graft").unwrap().is_none());

    // Six clients race to create each of five keys: exactly one wins each.
    let clients: Vec<Arc<dyn Blobs>> = (0..6).map(|_| open(&s3, "fleet/one")).collect();
    for round in 0..5 {
        let key = format!("changes/race-{round}.json");
        let wins: usize = std::thread::scope(|s| {
            let hs: Vec<_> = clients
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let key = &key;
                    s.spawn(move || c.put(key, &[i as u8; 64], PutMode::Create).is_ok() as usize)
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1, "round {round}");
    }
    let listed: Vec<String> = a
        .list("changes/", Some("changes/race-2.json"))
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(listed, vec!["changes/race-3.json", "changes/race-4.json"]);

    // A 12 MiB value goes up in parts and comes back whole; a tree round-trips through the local cache.
    let dir = std::env::temp_dir().join(format!("sg-fleet-blobs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tree/sub")).unwrap();
    let big: Vec<u8> = (0..12u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    a.put_file("checkpoints/big.bin", &dir.join("big.bin"))
        .unwrap();
    assert!(a
        .get_file("checkpoints/big.bin", &dir.join("back.bin"))
        .unwrap());
    assert!(
        std::fs::read(dir.join("back.bin")).unwrap() == big,
        "multipart value differs"
    );
    std::fs::write(dir.join("tree/sub/config.json"), b"{}").unwrap();
    a.put_tree("checkpoints/c1", &dir.join("tree")).unwrap();
    assert!(a.has_tree("checkpoints/c1").unwrap());
    let b = open(&s3, "fleet/one");
    let local = b
        .get_tree("checkpoints/c1", &dir.join("cache"))
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(local.join("sub/config.json")).unwrap(), b"{}");
    assert!(b.delete_tree("checkpoints/c1").unwrap());
    assert!(a
        .get_tree("checkpoints/c1", &dir.join("cache2"))
        .unwrap()
        .is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_journal_stays_dense_with_writers_on_separate_clients() {
    let s3 = S3Server::start("sg-journal");
    let seqs: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|w| {
                let blobs = open(&s3, "j");
                s.spawn(move || {
                    let j = Journal::new(blobs, 1000);
                    (0..8)
                        .map(|i| {
                            j.record(&format!("tasks/w{w}-{i}.graft"), i == 7, "r")
                                .unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = seqs;
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=24).collect::<Vec<u64>>());
    let reader = Journal::new(open(&s3, "j"), 1000);
    let Since::Changes(all) = reader.since(0).unwrap() else {
        panic!("unexpected gap");
    };
    assert_eq!(all.len(), 24);
    assert_eq!(all.iter().filter(|c| c.deleted).count(), 3);
    assert_eq!(reader.since(24).unwrap(), Since::Changes(vec![]));
}

#[test]
fn a_replica_that_stops_beating_is_seen_dead_within_the_bound() {
    let s3 = S3Server::start("sg-replicas");
    let bound = Duration::from_secs(2);
    let a = Replicas::new(open(&s3, "r"), "a-1".into(), bound);
    let b = Replicas::new(open(&s3, "r"), "b-1".into(), bound);
    a.beat().unwrap();
    b.beat().unwrap();
    b.observe().unwrap();
    assert!(b.is_alive("a-1").unwrap());
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        a.beat().unwrap();
        b.observe().unwrap();
        assert!(b.is_alive("a-1").unwrap(), "a beating replica is alive");
    }
    let stopped = Instant::now();
    while b.is_alive("a-1").unwrap() {
        assert!(stopped.elapsed() < 3 * bound, "never declared dead");
        std::thread::sleep(Duration::from_millis(100));
        b.observe().unwrap();
    }
    b.leave().unwrap();
    a.observe().unwrap();
    assert!(!a.is_alive("b-1").unwrap(), "a clean stop is seen at once");
}
