//! Several replicas on one store, against a real S3 server (moto's server mode, started by the tests on
//! loopback; see tests/common/s3.rs): values are whole, conditional writes hold under racing clients, the
//! change journal stays dense, and a silent replica is seen dead; then two `skillgraft serve` processes on one
//! bucket: what one creates, replaces or deletes the other serves accordingly within the bound, and a replica
//! killed (-9) during a job and during writes leaves nothing half-written while the other reports its job
//! failed.

mod common;

use common::http::{Resp, Server};
use common::s3::S3Server;
use skillgraft::store::blob::{is_conflict, PutMode, Store};
use skillgraft::store::journal::{Journal, Since};
use skillgraft::store::object::S3Store;
use skillgraft::store::replicas::Replicas;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn open(s3: &S3Server, prefix: &str) -> Arc<dyn Store> {
    Arc::new(S3Store::open_with(&s3.url(prefix), &s3.env()).expect("open the bucket"))
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
    let clients: Vec<Arc<dyn Store>> = (0..6).map(|_| open(&s3, "fleet/one")).collect();
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

// ---- Two server processes on one bucket ------------------------------------------------------------------

/// How often the replicas poll the change journal in these tests, and the bound they must meet.
const SYNC_MS: u64 = 200;
const BOUND: Duration = Duration::from_secs(2);
/// A replica silent this long is dead.
const DEAD_SECS: u64 = 3;

fn work(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sg-fleet-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A replica on host `host` (replicas judge processes of their own host by their process ids, so the two
/// replicas here are given different host names: B then learns of A's death by its silent heartbeat, as
/// replicas on different machines do).
fn replica(model: &Path, s3: &S3Server, dir: &Path, host: &str) -> Server {
    let mut env = s3.env();
    env.push(("HOSTNAME".into(), host.into()));
    let sync = SYNC_MS.to_string();
    let dead = DEAD_SECS.to_string();
    let store = s3.url("fleet");
    Server::start_env(
        model,
        dir,
        &[
            "--store",
            &store,
            "--sync-ms",
            &sync,
            "--replica-dead-secs",
            &dead,
            "--threads",
            "1",
            "--job-threads",
            "1",
        ],
        &env,
    )
}

fn synthetic(model: &Path, out: &Path, seed: usize) -> Vec<u8> {
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_skillgraft"))
        .args(["synthetic", "--seed", &seed.to_string(), "--model"])
        .arg(model)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::read(out).unwrap()
}

fn put_graft(s: &Server, name: &str, bytes: &[u8]) -> Resp {
    s.call(
        "PUT",
        &format!("/v1/tasks/{name}/graft"),
        bytes,
        "application/octet-stream",
    )
}

fn predict(s: &Server, name: &str) -> Resp {
    s.json(
        "POST",
        &format!("/v1/tasks/{name}/predict"),
        &serde_json::json!({"inputs": ["a gorgeous , witty movie .", "dull and lifeless ."]}),
    )
}

/// The probabilities of a prediction (what differs between two grafts of one task).
fn probabilities(r: &Resp) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["probabilities"].clone())
        .collect()
}

/// Polls `f` until it is true; the time it took, or None past `limit`.
fn until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn two_replicas_on_one_bucket_agree_on_creates_replaces_and_deletes_within_the_bound() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let s3 = S3Server::start("sg-two-replicas");
    let dir = work("agree");
    let a = replica(&model, &s3, &dir.join("a"), "host-a");
    let b = replica(&model, &s3, &dir.join("b"), "host-b");
    let g1 = synthetic(&model, &dir.join("g1.graft"), 1);
    let g2 = synthetic(&model, &dir.join("g2.graft"), 2);

    // Create on A, predict on B at once: B looks the unknown task up in the store.
    assert_eq!(put_graft(&a, "shared", &g1).status, 200);
    let first = probabilities(&predict(&b, "shared"));
    assert_eq!(first, probabilities(&predict(&a, "shared")));
    let listed = b.get("/v1/tasks").json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "shared"),
        "{listed}"
    );

    // Replace on A: B serves the new graft within the bound.
    assert_eq!(put_graft(&a, "shared", &g2).status, 200);
    let second = probabilities(&predict(&a, "shared"));
    assert_ne!(first, second, "the two grafts predict differently");
    let replaced = until(BOUND * 2, || {
        probabilities(&predict(&b, "shared")) == second
    })
    .expect("B never served the replaced graft");

    // Delete on A: B answers 404 within the bound.
    assert_eq!(
        a.call("DELETE", "/v1/tasks/shared", b"", "application/json")
            .status,
        204
    );
    let deleted = until(BOUND * 2, || predict(&b, "shared").status == 404)
        .expect("B kept serving a deleted task");
    eprintln!(
        "convergence (sync every {SYNC_MS} ms): replace seen by B after {} ms, delete after {} ms",
        replaced.as_millis(),
        deleted.as_millis()
    );
    assert!(
        replaced <= BOUND && deleted <= BOUND,
        "{replaced:?} / {deleted:?} > {BOUND:?}"
    );

    // And the other way round, with the name created again.
    assert_eq!(put_graft(&b, "shared", &g1).status, 200);
    let back =
        until(BOUND, || predict(&a, "shared").status == 200).expect("A never saw B's create");
    assert_eq!(probabilities(&predict(&a, "shared")), first);
    eprintln!("create on B seen by A after {} ms", back.as_millis());

    // Data sets live in the bucket too: uploaded on A, read and listed on B, deleted on B, gone on A.
    let r = a.call(
        "POST",
        "/v1/datasets?filename=tone.csv",
        b"text,label\nfine work,praise\nawful,complaint\nit rains,fact\ngood,praise\nbad,complaint\nrain,fact\n",
        "text/csv",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let got = b.get(&format!("/v1/datasets/{id}"));
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json()["labels"],
        serde_json::json!(["complaint", "fact", "praise"])
    );
    let listed = b.get("/v1/datasets").json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == id.as_str()),
        "{listed}"
    );
    let r = b.call(
        "DELETE",
        &format!("/v1/datasets/{id}"),
        b"",
        "application/json",
    );
    assert_eq!(r.status, 204);
    assert_eq!(a.get(&format!("/v1/datasets/{id}")).status, 404);
    a.stop();
    b.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_replica_killed_during_a_job_and_writes_leaves_nothing_half_written_and_its_job_reported_failed(
) {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let s3 = S3Server::start("sg-kill");
    let dir = work("kill");
    let a = replica(&model, &s3, &dir.join("a"), "host-a");
    let b = replica(&model, &s3, &dir.join("b"), "host-b");

    // A checkpoint uploaded through A, a long localization job on A, watched through B.
    let ft = dir.join("ft");
    common::checkpoint::finetune_quick(&model, &ft);
    let tar = common::checkpoint::tar_of(&ft, &common::checkpoint::FILES, None);
    let up = a.call("POST", "/v1/checkpoints", &tar, "application/x-tar");
    assert!(up.status == 200 || up.status == 201, "{}", up.text());
    let ckpt = up.json()["id"].as_str().unwrap().to_string();
    let job = a.json(
        "POST",
        "/v1/localizations",
        &serde_json::json!({"checkpoint": ckpt, "task_name": "from-job", "task": "sst2", "k": 8,
            "max_test": 10, "epochs": 1000}),
    );
    assert_eq!(job.status, 202, "{}", job.text());
    let id = job.json()["id"].as_str().unwrap().to_string();
    let path = format!("/v1/localizations/{id}");
    until(Duration::from_secs(120), || {
        b.get(&path).json()["state"] == "running"
    })
    .expect("B never saw the job running");

    // Graft writes in flight on A when it dies.
    let g: Vec<Vec<u8>> = (0..3)
        .map(|i| synthetic(&model, &dir.join(format!("w{i}.graft")), 10 + i))
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("busy{}", i % 2);
                // The connection fails once A is dead: the writer stops there.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    put_graft(&a, &name, &g[i % 3]).status
                }));
                match r {
                    Ok(200) => acked.push((name, i % 3)),
                    Ok(_) => {}
                    Err(_) => break,
                }
                i += 1;
            }
            acked
        });
        std::thread::sleep(Duration::from_millis(700));
        // kill -9 A during the job and the writes.
        let _ = std::process::Command::new("kill")
            .args(["-9", &a.child.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap()
    });
    assert!(
        !acked.is_empty(),
        "no write was acknowledged before the kill"
    );
    a.crash();

    // B reports the job failed once A's heartbeat is stale.
    let failed = until(Duration::from_secs(DEAD_SECS + 10), || {
        b.get(&path).json()["state"] == "failed"
    })
    .expect("B never reported the dead replica's job as failed");
    let st = b.get(&path).json();
    assert!(
        st["error"].as_str().unwrap_or("").contains("replica"),
        "{st}"
    );
    eprintln!(
        "job of the killed replica reported failed by B after {} ms",
        failed.as_millis()
    );

    // Nothing half-written: every stored task is a whole graft B serves, acknowledged writes are there, and
    // the bucket holds no temporary or partial object.
    let blobs = open(&s3, "fleet");
    for m in blobs.list("tasks/", None).unwrap() {
        let name = m
            .key
            .trim_start_matches("tasks/")
            .trim_end_matches(".graft")
            .to_string();
        assert_eq!(
            predict(&b, &name).status,
            200,
            "stored task {name} is not servable"
        );
    }
    for (name, _) in &acked {
        assert_eq!(
            predict(&b, name).status,
            200,
            "acknowledged task {name} lost"
        );
    }
    let last: std::collections::HashMap<&str, usize> =
        acked.iter().map(|(n, i)| (n.as_str(), *i)).collect();
    for (name, i) in last {
        let stored = b.get(&format!("/v1/tasks/{name}/graft")).body;
        assert!(
            g.contains(&stored),
            "{name} holds bytes no writer sent (last acknowledged: graft {i})"
        );
    }
    for folder in ["tasks/", "jobs/", "checkpoints/", "changes/"] {
        for m in blobs.list(folder, None).unwrap() {
            assert!(!m.key.contains("/."), "temporary object {}", m.key);
        }
    }
    for m in blobs.list("jobs/", None).unwrap() {
        let (bytes, _) = blobs.get(&m.key).unwrap().unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("a whole job record");
    }
    assert_eq!(b.get(&format!("/v1/checkpoints/{ckpt}")).status, 200);

    // A restarted replica agrees.
    let a2 = replica(&model, &s3, &dir.join("a2"), "host-a");
    assert_eq!(a2.get(&path).json()["state"], "failed");
    b.stop();
    a2.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
