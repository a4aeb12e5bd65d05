//! The Redis key names of the module cache, as the worker reads them.
//!
//! The supervisor writes these keys (`supervisor/src/intake/keys.rs` builds the same
//! names); both sides put the same prefix in front (empty in production, one per test).
//!
//! - `{prefix}warden:module:<path>`: a hash `{content, hash}` per module;
//! - `{prefix}warden:module:index`: the set of every module path;
//! - `{prefix}warden:module:generation`: a number the supervisor changes whenever it
//!   changes the cache; missing means the cache was wiped.

/// Hash field holding a module's source text.
pub const CONTENT_FIELD: &str = "content";
/// Hash field holding the hex digest of the content (the compiled-code cache key).
pub const HASH_FIELD: &str = "hash";

/// Key names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleKeys {
    prefix: String,
}

impl ModuleKeys {
    pub fn new(prefix: impl Into<String>) -> ModuleKeys {
        ModuleKeys {
            prefix: prefix.into(),
        }
    }

    pub fn module(&self, path: &str) -> String {
        format!("{}warden:module:{path}", self.prefix)
    }

    pub fn generation(&self) -> String {
        format!("{}warden:module:generation", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same literals are asserted on the supervisor's side.
    #[test]
    fn names_match_the_design() {
        let k = ModuleKeys::new("");
        assert_eq!(
            k.module("shared/tickets.py"),
            "warden:module:shared/tickets.py"
        );
        assert_eq!(k.generation(), "warden:module:generation");
        let k = ModuleKeys::new("t:ab:");
        assert_eq!(k.module("a.py"), "t:ab:warden:module:a.py");
        assert_eq!(k.generation(), "t:ab:warden:module:generation");
    }
}
