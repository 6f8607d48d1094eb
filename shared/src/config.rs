//! Configuration helpers shared by both services (pure: no I/O): environment overrides of a
//! parsed TOML table.

/// Apply `PREFIX` + `A__B__C=value` overrides to the table (`a.b.c`); values are parsed as TOML
/// (so `true`, `42`, `["x"]` work) and fall back to strings.
///
/// # Errors
/// One message per override that would replace a value by a table.
pub fn apply_env(
    table: &mut toml::Table,
    env: &[(String, String)],
    prefix: &str,
) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    for (k, v) in env {
        let Some(path) = k.strip_prefix(prefix) else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
        let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.clone()));
        if let Err(e) = set_path(table, &parts, value) {
            errs.push(format!("{k}: {e}"));
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

fn set_path(table: &mut toml::Table, parts: &[String], value: toml::Value) -> Result<(), String> {
    match parts {
        [] => Ok(()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            match table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("{first} is not a table")),
            }
        }
    }
}

/// Parse TOML text into `T` after applying environment overrides (`PREFIX` + `A__B__C`),
/// naming the offending key in every error (`tls.cert: invalid type…`).
///
/// # Errors
/// The messages: TOML syntax, overrides that clash with tables, or the first field that does
/// not deserialize (with its path).
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    env: &[(String, String)],
    prefix: &str,
) -> Result<T, Vec<String>> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| vec![format!("TOML: {e}")])?;
    apply_env(&mut table, env, prefix)?;
    serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| vec![format!("{}: {}", e.path(), e.inner())])
}

/// The process environment's variables whose names start with `prefix` (the only ones
/// configuration overrides may come from). Every other variable — a passphrase held in the
/// environment among them — is read only as raw bytes and wiped at once, never kept in a
/// `String`. (The process environment itself still holds it: prefer passphrase files.)
pub fn prefixed_env(prefix: &str) -> Vec<(String, String)> {
    use zeroize::Zeroize;
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let keep = name.to_str().is_some_and(|n| n.starts_with(prefix));
            if keep {
                Some((name.into_string().ok()?, value.into_string().ok()?))
            } else {
                value.into_encoded_bytes().zeroize();
                None
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn only_prefixed_variables_are_kept() {
        // PATH is set in any test environment; nothing starts with this prefix.
        let path = super::prefixed_env("PATH");
        assert!(path.iter().all(|(k, _)| k.starts_with("PATH")));
        assert!(path.iter().any(|(k, _)| k == "PATH"));
        assert!(super::prefixed_env("MUSIG2_NO_SUCH_PREFIX__").is_empty());
    }
}
