//! `sealgate config show`: the configuration in force, defaults filled in,
//! in the file's own syntax (as `postconf` shows Postfix's); with `-n` only
//! what differs from the built-in defaults (as `postconf -n`).

use toml::Value;

use super::Config;

impl Config {
    /// The configuration as TOML; `changed_only`: what differs from
    /// [`Config::default`].
    pub fn show(&self, changed_only: bool) -> Result<String, toml::ser::Error> {
        let mut value = Value::try_from(self)?;
        if changed_only {
            let default = Value::try_from(Config::default())?;
            value = changed(value, &default).unwrap_or(Value::Table(Default::default()));
        }
        toml::to_string(&value)
    }
}

/// What of `value` differs from `default`: tables key by key, everything
/// else (lists of listeners, routes, tenants included) as a whole.
fn changed(value: Value, default: &Value) -> Option<Value> {
    match (value, default) {
        (Value::Table(table), Value::Table(defaults)) => {
            let kept: toml::Table = table
                .into_iter()
                .filter_map(|(k, v)| match defaults.get(&k) {
                    Some(d) => changed(v, d).map(|v| (k, v)),
                    None => Some((k, v)),
                })
                .collect();
            (!kept.is_empty()).then_some(Value::Table(kept))
        }
        (value, default) if value == *default => None,
        (value, _) => Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn shown_configuration_reads_back_the_same() {
        let config = parse(
            "[queue]\nretry_schedule = [\"1m\", \"1h 30m\"]\nmax_lifetime = \"5d\"\n\
             [[route]]\ndomain = \"*.example.org\"\nnext_hop = \"[2001:db8::1]:2525\"\n\
             [[tenant]]\nid = \"default\"\nnetworks = [\"10.0.0.0/8\"]\n\
             client_certificates = [{ sha256 = \"ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89\" }]\n\
             [tenant.retention]\nhold_delivered = \"2h\"\n",
        );
        let shown = config.show(false).unwrap();
        let again = parse(&shown);
        assert_eq!(format!("{again:?}"), format!("{config:?}"), "{shown}");
        assert!(shown.contains("max_lifetime = \"5days\""), "{shown}");
    }

    #[test]
    fn changed_only_lists_what_differs_from_the_defaults() {
        let config = parse("[limits]\nmax_recipients = 10\n[outbound]\nport = 2525\n");
        let shown = config.show(true).unwrap();
        assert_eq!(
            shown.trim(),
            "[limits]\nmax_recipients = 10\n\n[outbound]\nport = 2525",
            "{shown}"
        );
        assert_eq!(Config::default().show(true).unwrap().trim(), "");
    }
}
