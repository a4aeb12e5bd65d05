//! Python source checks at push time, without running the code: does it parse, and
//! which functions does it define at module top level.
//!
//! The supervisor does not embed Python, so the check runs `/usr/bin/python3 -I -S`
//! (the interpreter the worker is built against, `.cargo/config.toml`'s `PYO3_PYTHON`;
//! `WARDEN_PYTHON` overrides it) on a short script that reads the source from stdin and
//! calls `ast.parse`: compile only, never `exec`, so nothing the source does at import
//! time happens. [`compile_errors`] checks many sources (a `module push`) in one
//! interpreter. The source goes through stdin, never the command line (size limits,
//! and `ps` would show it).
//!
//! When the interpreter cannot be started the check fails and the push is refused:
//! storing code nobody checked is what the check is there to prevent, and a host that
//! pushes workflows for Warden's workers has the worker's Python anyway.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// The interpreter, unless `WARDEN_PYTHON` names another one.
const DEFAULT_PYTHON: &str = "/usr/bin/python3";

/// Parses stdin (bytes, so a coding declaration is honoured) and prints either
/// `ok` and one top-level function name per line, or `syntax`, the line and the message.
const SCRIPT: &str = r#"
import ast, sys
src = sys.stdin.buffer.read()
try:
    tree = ast.parse(src)
except SyntaxError as e:
    print("syntax"); print(e.lineno or 0); print(e.msg)
    sys.exit(0)
except ValueError as e:
    print("syntax"); print(0); print(str(e))
    sys.exit(0)
print("ok")
for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        print(node.name)
"#;

/// Parses many sources in one interpreter: each is preceded on stdin by a line with
/// its length in bytes; prints `index<TAB>line<TAB>message` for each that does not
/// parse, then `done`.
const MANY_SCRIPT: &str = r#"
import ast, sys
data = sys.stdin.buffer
i = 0
while True:
    n = data.readline()
    if not n:
        break
    src = data.read(int(n))
    try:
        ast.parse(src)
    except SyntaxError as e:
        print(i, e.lineno or 0, " ".join(str(e.msg).split()), sep="\t")
    except ValueError as e:
        print(i, 0, " ".join(str(e).split()), sep="\t")
    i += 1
print("done")
"#;

/// A source of [`compile_errors`] that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxIssue {
    /// Its index in the input.
    pub index: usize,
    /// 0 when Python gives none.
    pub line: u32,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PyCheckError {
    /// The source does not parse (`line` 0 when Python gives none).
    #[error("line {line}: {message}")]
    Syntax { line: u32, message: String },
    /// The interpreter could not be run, or answered something unexpected.
    #[error("cannot check Python source: {python} {what}")]
    Interpreter { python: String, what: String },
}

/// The interpreter the checks run.
pub fn python() -> String {
    std::env::var("WARDEN_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PYTHON.to_string())
}

/// Runs `script` in the isolated interpreter with `input` written to its stdin (from
/// another thread: a script may report as it reads, and a long report could fill the
/// stdout pipe while this side still writes), and returns what it printed. `what` names
/// the input in the error ("the source", "the sources").
fn run_script(script: &str, input: &[u8], what: &str) -> Result<Output, PyCheckError> {
    let python = python();
    let fail = |detail: String| PyCheckError::Interpreter {
        python: python.clone(),
        what: detail,
    };
    let mut child = Command::new(&python)
        .args(["-I", "-S", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot be started ({e})")))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let (written, out) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || stdin.write_all(input));
        let out = child.wait_with_output();
        (writer.join().expect("the writer does not panic"), out)
    });
    let out = out.map_err(|e| fail(format!("did not finish ({e})")))?;
    if let Err(e) = written {
        return Err(fail(format!("did not read {what} ({e})")));
    }
    Ok(out)
}

/// The error for a script that ended badly or answered what it should not.
fn script_failed(out: &Output) -> PyCheckError {
    PyCheckError::Interpreter {
        python: python(),
        what: format!(
            "failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// Parses `source` and returns the names of its top-level `def`/`async def` functions.
pub fn top_level_functions(source: &str) -> Result<Vec<String>, PyCheckError> {
    let out = run_script(SCRIPT, source.as_bytes(), "the source")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    match (out.status.success(), lines.next()) {
        (true, Some("ok")) => Ok(lines.map(str::to_string).collect()),
        (true, Some("syntax")) => {
            let line = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
            let message = lines.collect::<Vec<_>>().join(" ");
            Err(PyCheckError::Syntax { line, message })
        }
        _ => Err(script_failed(&out)),
    }
}

/// Parses every source (one interpreter for all) and returns those that do not parse,
/// in input order; empty when all do.
pub fn compile_errors(sources: &[&str]) -> Result<Vec<SyntaxIssue>, PyCheckError> {
    let mut input = Vec::new();
    for source in sources {
        input.extend_from_slice(format!("{}\n", source.len()).as_bytes());
        input.extend_from_slice(source.as_bytes());
    }
    let out = run_script(MANY_SCRIPT, &input, "the sources")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.lines().last() != Some("done") {
        return Err(script_failed(&out));
    }
    let fail = |what: String| PyCheckError::Interpreter {
        python: python(),
        what,
    };
    let mut issues = Vec::new();
    for line in stdout.lines().filter(|l| *l != "done") {
        let mut fields = line.splitn(3, '\t');
        let (Some(index), Some(lineno), Some(message)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(fail(format!("answered {line:?}")));
        };
        issues.push(SyntaxIssue {
            index: index
                .parse()
                .map_err(|_| fail(format!("answered {line:?}")))?,
            line: lineno.parse().unwrap_or(0),
            message: message.to_string(),
        });
    }
    Ok(issues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_top_level_functions_only() {
        let src = "import os\ndef run(x):\n    def inner(): pass\n    return x\n\
                   async def later(): pass\nclass C:\n    def method(self): pass\n";
        assert_eq!(top_level_functions(src).unwrap(), ["run", "later"]);
    }

    #[test]
    fn a_syntax_error_names_the_line() {
        let err = top_level_functions("x = 1\ndef run(:\n    pass\n").unwrap_err();
        match err {
            PyCheckError::Syntax { line, message } => {
                assert_eq!(line, 2);
                assert!(!message.is_empty());
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn compile_errors_names_each_bad_source() {
        let many: Vec<String> = (0..2000).map(|i| format!("def f{i}(:\n")).collect();
        let mut sources = vec!["x = 1\n", "def f(:\n  pass\n", ""];
        sources.extend(many.iter().map(String::as_str));
        let issues = compile_errors(&sources).unwrap();
        assert_eq!(issues.len(), 2001);
        assert_eq!((issues[0].index, issues[0].line), (1, 1));
        assert!(!issues[0].message.is_empty());
        assert!(compile_errors(&["a = 1\n", "é = 'ü'\n"])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_source_is_never_run() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let src = format!(
            "open({:?}, 'w').write('x')\ndef run(): pass\n",
            marker.display().to_string()
        );
        assert_eq!(top_level_functions(&src).unwrap(), ["run"]);
        assert!(!marker.exists());
    }
}
