//! Workspace imports end to end, through real worker processes: modules pushed to
//! PostgreSQL, synced to Redis by the supervisor's module sync, imported by workflows
//! through the workers' Rust finder — in both isolation modes.

use std::time::Duration;

use warden::testing::module_store as store;
use warden::{ExecutionOutcome, Status};
use warden::{ModuleCache, ModuleFile, ModuleSync};
use warden_protocol::Isolation;
use warden_tests::db::TestDb;
use warden_tests::pool::{job, TestPool};
use warden_tests::redis::TestRedis;

const WORKSPACE: &[(&str, &str)] = &[
    // A regular package, its submodules, relative imports.
    ("shared/__init__.py", "from .tickets import open_ticket\n"),
    (
        "shared/tickets.py",
        "from .text import slug\nfrom . import text\n\ndef open_ticket(title):\n    return {'id': slug(title), 'by': text.__name__}\n",
    ),
    (
        "shared/text.py",
        "def slug(s):\n    return s.lower().replace(' ', '-')\n\ndef explode():\n    raise KeyError('no such ticket')\n",
    ),
    // A namespace package (no __init__.py) two levels deep.
    ("vendor/acme/client.py", "def ping():\n    return 'pong'\n"),
    // A circular import and a syntax error.
    ("loop/first.py", "from loop.second import two\n\ndef one():\n    return 1\n"),
    ("loop/second.py", "from loop.first import one\n\ndef two():\n    return 2\n"),
    ("broken.py", "def fine():\n    return 1\n\ndef broken(:\n    pass\n"),
    ("shared/extra.py", "E = 1\n"),
];

struct Fixture {
    db: TestDb,
    _redis: TestRedis,
    sync: ModuleSync,
    pool: TestPool,
    generation: u64,
}

impl Fixture {
    async fn start(isolation: Isolation) -> Fixture {
        let db = TestDb::new().await;
        let redis = TestRedis::new();
        let files: Vec<ModuleFile> = WORKSPACE
            .iter()
            .map(|(p, c)| ModuleFile::new(*p, *c))
            .collect();
        store::push(&db.store, &files).await.unwrap();
        let cache = ModuleCache::connect(&redis.url, redis.keys())
            .await
            .unwrap();
        let sync = ModuleSync::new(db.store.clone(), cache);
        let generation = sync.full_sync().await.unwrap().generation;
        let (url, prefix) = (redis.url.clone(), redis.prefix.clone());
        let pool = TestPool::start(|cfg| {
            cfg.isolation = isolation;
            cfg.redis_url = Some(url);
            cfg.key_prefix = prefix;
        })
        .await;
        Fixture {
            db,
            _redis: redis,
            sync,
            pool,
            generation,
        }
    }

    async fn run(&mut self, id: &str, source: &str) -> ExecutionOutcome {
        let mut j = job(id, source, "{}", Some(Duration::from_secs(30)));
        // What `serve` does per batch.
        j.modules_generation = self.sync.check().await;
        j.modules_manifest = Some(self.sync.manifest());
        assert!(self.pool.pool.submit(j).is_ok());
        self.pool.finished().await.outcome
    }

    async fn value(&mut self, id: &str, source: &str) -> serde_json::Value {
        let out = self.run(id, source).await;
        assert_eq!(out.status, Status::Success, "{id}: {:?}", out.error);
        serde_json::from_str(out.result_json.as_deref().unwrap()).unwrap()
    }
}

const MODES: [Isolation; 2] = [Isolation::Fork, Isolation::Reuse];

#[tokio::test]
async fn packages_submodules_relative_and_namespace_imports_resolve() {
    for mode in MODES {
        let mut f = Fixture::start(mode).await;
        let src = r#"
import shared.tickets
from shared import open_ticket
from vendor.acme import client
import vendor

def run():
    return {
        "ticket": open_ticket("Printer On Fire"),
        "file": shared.tickets.__file__,
        "pkg": shared.__file__,
        "ns": [getattr(vendor, "__file__", None), list(vendor.__path__)],
        "ping": client.ping(),
    }
"#;
        assert_eq!(
            f.value("imports", src).await,
            serde_json::json!({
                "ticket": {"id": "printer-on-fire", "by": "shared.text"},
                "file": "shared/tickets.py",
                "pkg": "shared/__init__.py",
                "ns": [null, []],
                "ping": "pong",
            }),
            "{mode:?}"
        );
    }
}

#[tokio::test]
async fn names_outside_the_workspace_fall_through_to_the_normal_import() {
    for mode in MODES {
        let mut f = Fixture::start(mode).await;
        let src = "import email.mime.text, colorsys\n\ndef run():\n    return [email.mime.text.__name__, colorsys.__file__.endswith('colorsys.py')]\n";
        assert_eq!(
            f.value("stdlib", src).await,
            serde_json::json!(["email.mime.text", true]),
            "{mode:?}"
        );
        let out = f
            .run(
                "nowhere",
                "import nowhere_to_be_found\n\ndef run():\n    pass\n",
            )
            .await;
        let e = out.error.unwrap();
        assert_eq!(e.error_type, "ModuleNotFoundError", "{mode:?}");
        assert!(
            e.message.contains("'nowhere_to_be_found'"),
            "{mode:?}: {e:?}"
        );
    }
}

#[tokio::test]
async fn errors_in_workspace_modules_name_their_path_and_line() {
    for mode in MODES {
        let mut f = Fixture::start(mode).await;

        let out = f
            .run(
                "tb",
                "from shared.text import explode\n\ndef run():\n    explode()\n",
            )
            .await;
        let e = out.error.unwrap();
        assert_eq!(e.error_type, "KeyError", "{mode:?}");
        assert!(
            e.traceback
                .contains("File \"shared/text.py\", line 5, in explode"),
            "{mode:?}: {}",
            e.traceback
        );
        assert!(
            e.traceback.contains("raise KeyError('no such ticket')"),
            "source lines shown: {}",
            e.traceback
        );

        let out = f
            .run("syntax", "import broken\n\ndef run():\n    pass\n")
            .await;
        let e = out.error.unwrap();
        assert_eq!(e.error_type, "SyntaxError", "{mode:?}");
        assert!(e.message.contains("broken.py, line 4"), "{mode:?}: {e:?}");
        assert!(
            e.traceback.contains("File \"broken.py\", line 4"),
            "{mode:?}: {}",
            e.traceback
        );

        let out = f
            .run("circle", "import loop.first\n\ndef run():\n    pass\n")
            .await;
        let e = out.error.unwrap();
        assert_eq!(e.error_type, "ImportError", "{mode:?}");
        assert!(e.message.contains("circular import"), "{mode:?}: {e:?}");

        let out = f
            .run("missing", "import shared.nothing\n\ndef run():\n    pass\n")
            .await;
        let e = out.error.unwrap();
        assert_eq!(e.error_type, "ModuleNotFoundError", "{mode:?}");
        assert!(e.message.contains("'shared.nothing'"), "{mode:?}: {e:?}");
    }
}

#[tokio::test]
async fn a_push_or_a_removal_is_seen_by_the_next_execution() {
    for mode in MODES {
        let mut f = Fixture::start(mode).await;
        let src = "from vendor.acme import client\n\ndef run():\n    return client.ping()\n";
        assert_eq!(f.value("before", src).await, serde_json::json!("pong"));

        let new = ModuleFile::new(
            "vendor/acme/client.py",
            "def ping():\n    return 'PONG v2'\n",
        );
        store::push(&f.db.store, &[new]).await.unwrap();
        let g2 = f
            .sync
            .sync_paths(&["vendor/acme/client.py".into()])
            .await
            .unwrap()
            .generation;
        assert_ne!(g2, f.generation);
        assert_eq!(
            f.value("after", src).await,
            serde_json::json!("PONG v2"),
            "{mode:?}"
        );

        let extra = "import shared.extra\n\ndef run():\n    return shared.extra.E\n";
        assert_eq!(f.value("extra", extra).await, serde_json::json!(1));
        let gone = store::remove(&f.db.store, "shared/extra.py").await.unwrap();
        f.sync.sync_paths(&gone).await.unwrap();
        let out = f.run("removed", extra).await;
        let e = out.error.unwrap();
        assert_eq!(e.error_type, "ModuleNotFoundError", "{mode:?}");
        assert!(e.message.contains("'shared.extra'"), "{mode:?}: {e:?}");
    }
}
