//! Packages imported by workflows through `serve`, in both isolation modes: `requests`
//! with its dependencies, the compiled extensions of `charset-normalizer` and `pydantic`
//! (`pydantic-core`), a workspace module
//! that shadows a package of the same name, and a package set workers cannot change.

use warden_protocol::Isolation;
use warden_tests::cli::write;
use warden_tests::serve::value;

use crate::fixture::Fixture;

const WORKFLOW: &str = r#"
import os
import requests
import charset_normalizer
from charset_normalizer import md
import six
import pydantic
import pydantic_core

class Ticket(pydantic.BaseModel):
    id: int
    title: str

def run():
    here = os.path.dirname(requests.__file__)
    try:
        with open(os.path.join(here, "planted.py"), "w") as f:
            f.write("x = 1")
        wrote = "wrote"
    except OSError as e:
        wrote = type(e).__name__
    try:
        os.chmod(requests.__file__, 0o666)
        chmod = "changed"
    except OSError as e:
        chmod = type(e).__name__
    ticket = Ticket.model_validate({"id": "42", "title": "printer"})
    best = charset_normalizer.from_bytes("héllo wörld, ça va".encode("utf-8")).best()
    return {
        "requests": requests.__version__,
        "requests_file": requests.__file__,
        "urllib3": __import__("urllib3").__version__,
        "md": md.__file__,
        "encoding": best.encoding,
        "ticket_id": ticket.id,
        "pydantic_core": pydantic_core._pydantic_core.__file__,
        "six": getattr(six, "WHO", "the package"),
        "wrote": wrote,
        "chmod": chmod,
        "uid": os.getuid(),
    }
"#;

#[tokio::test]
async fn requests_and_a_compiled_extension_in_fork_mode() {
    imports(Isolation::Fork).await;
}

#[tokio::test]
async fn requests_and_a_compiled_extension_in_reuse_mode() {
    imports(Isolation::Reuse).await;
}

async fn imports(isolation: Isolation) {
    let f = Fixture::start(isolation).await;
    f.serve.push("uses_packages", WORKFLOW, None).await;
    // A workspace module named like an installed package: the workspace wins.
    write(f.cwd.path(), "six.py", "WHO = 'the workspace'\n");
    f.warden(&["module", "push", "six.py"]);

    let before = f.serve.run("before", "uses_packages", "{}").await;
    assert_eq!(
        before.status,
        warden::Status::Failed,
        "no packages yet: {before:?}"
    );
    assert!(
        format!("{before:?}").contains("No module named 'requests'"),
        "{before:?}"
    );

    let rec = f
        .install(&["requests", "charset-normalizer", "six", "pydantic"])
        .await;
    let dir = rec.directory.expect("a directory in use");
    assert!(dir.starts_with(f.root.to_str().unwrap()), "{dir}");

    // Several executions: in reuse mode the same interpreter keeps the extension loaded.
    for i in 0..3 {
        let c = f
            .serve
            .run(&format!("after-{i}"), "uses_packages", "{}")
            .await;
        assert_eq!(c.status, warden::Status::Success, "{c:?}");
        let v = value(&c);
        assert!(
            v["requests_file"].as_str().unwrap().starts_with(&dir),
            "requests comes from the set: {v}"
        );
        assert!(v["urllib3"].is_string(), "{v}");
        assert!(
            v["md"].as_str().unwrap().ends_with(".so"),
            "the compiled extension is what runs: {v}"
        );
        assert_eq!(v["encoding"], "utf_8", "{v}");
        assert_eq!(
            v["ticket_id"], 42,
            "pydantic (pydantic-core, Rust) validated: {v}"
        );
        assert!(v["pydantic_core"].as_str().unwrap().ends_with(".so"), "{v}");
        assert_eq!(v["six"], "the workspace", "{v}");
        if warden_tests::pool::unique_uid_base().is_some() {
            assert_ne!(v["uid"], 0, "{v}");
            assert_eq!(v["wrote"], "PermissionError", "{v}");
            assert_eq!(v["chmod"], "PermissionError", "{v}");
        }
    }
    assert!(!std::path::Path::new(&dir)
        .join("requests/planted.py")
        .exists());
    // Sealed: root-owned, nothing writable by group or others.
    let meta = std::fs::metadata(std::path::Path::new(&dir).join("requests")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(meta.uid(), 0);
    }
}

/// `--preload`: the template imports the named packages once (after a rollover, from
/// the new set), so a forked child finds them already in `sys.modules`; a name that
/// cannot be imported is skipped and does not stop the template.
#[tokio::test]
async fn preloaded_packages_are_already_imported_in_a_forked_child() {
    // iniconfig: small, and not among the host's own packages (six is, on Debian).
    let f = Fixture::start_with(Isolation::Fork, &["iniconfig", "warden_no_such_module"]).await;
    f.serve
        .push(
            "preloaded",
            "import sys\n\ndef run():\n    return {'loaded': 'iniconfig' in sys.modules}\n",
            None,
        )
        .await;
    let c = f.serve.run("before", "preloaded", "{}").await;
    assert_eq!(value(&c)["loaded"], false, "no set yet: nothing to preload");
    f.install(&["iniconfig"]).await;
    let c = f.serve.run("after", "preloaded", "{}").await;
    assert_eq!(c.status, warden::Status::Success, "{c:?}");
    assert_eq!(value(&c)["loaded"], true, "imported by the template");
}
