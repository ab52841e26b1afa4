//! What a reload (SIGHUP) may change while the gateway runs.
//!
//! Accepting mail reads its settings per connection, so who may relay,
//! tenants, limits, the inbound certificate and the users file change at
//! once; routes, tenants and `[queue]` are handed to delivery and the
//! scheduler, which read them per attempt. The rest
//! of delivery, storage and the listeners were built from the
//! configuration at start; a change there is named so that the operator
//! knows to restart, and the running values stay.

use super::{Config, Limits};

impl Config {
    /// The configuration a reload puts in force: from `new`, what can
    /// change while running; from `self`, everything else. The second value
    /// names the settings that changed but wait for a restart.
    pub fn reloaded(&self, new: Config) -> (Config, Vec<&'static str>) {
        // Config has no PartialEq (it holds parsed certificate rules and
        // the like); the debug form compares every field.
        fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
            format!("{a:?}") != format!("{b:?}")
        }
        let mut restart = Vec::new();
        let mut pending = |changed: bool, name: &'static str| {
            if changed {
                restart.push(name);
            }
        };
        pending(differs(&self.listeners, &new.listeners), "listener");
        pending(self.data_dir != new.data_dir, "data_dir");
        pending(self.hostname != new.hostname, "hostname");
        pending(differs(&self.outbound, &new.outbound), "outbound");
        pending(differs(&self.dns, &new.dns), "dns");
        pending(differs(&self.mta_sts, &new.mta_sts), "mta_sts");
        pending(differs(&self.revocation, &new.revocation), "revocation");
        pending(differs(&self.smime, &new.smime), "smime");
        pending(differs(&self.seal, &new.seal), "seal");
        pending(differs(&self.spool, &new.spool), "spool");
        pending(differs(&self.storage, &new.storage), "storage");
        pending(differs(&self.cluster, &new.cluster), "cluster");
        pending(differs(&self.console, &new.console), "console");
        pending(differs(&self.policy, &new.policy), "policy.dir");
        pending(differs(&self.report, &new.report), "report");
        pending(
            self.limits.max_connections != new.limits.max_connections,
            "limits.max_connections",
        );

        let mut merged = self.clone();
        merged.tls = new.tls;
        merged.auth = new.auth;
        merged.limits = Limits {
            max_connections: self.limits.max_connections,
            ..new.limits
        };
        merged.postmaster = new.postmaster;
        // Read per route lookup and per scheduler round (the server hands
        // them to delivery and the queue).
        merged.routes = new.routes;
        merged.queue = new.queue;
        // Tenants (who may relay as one, their seal, retention, view and
        // DKIM settings) are read per session and per delivery: a tenant
        // added, changed or removed applies to the next session and the
        // next attempt. Mail of a removed tenant already queued is still
        // delivered, under the general policy and defaults.
        merged.tenants = new.tenants;
        merged.default_tenant = new.default_tenant;
        (merged, restart)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        let text = format!("default_tenant = \"a\"\n{text}");
        Config::parse(&text, std::path::Path::new("test.toml")).unwrap()
    }

    #[test]
    fn inbound_settings_change_and_the_rest_is_named() {
        let old = parse(
            "[limits]\nmax_recipients = 10\n[[tenant]]\nid = \"a\"\nnetworks = [\"10.0.0.0/8\"]\n",
        );
        let new = parse(
            "hostname = \"other.test\"\n[limits]\nmax_recipients = 5\nmax_connections = 7\n\
             [[tenant]]\nid = \"a\"\nnetworks = [\"192.0.2.0/24\"]\n\
             [[route]]\ndomain = \"x.test\"\nnext_hop = \"127.0.0.1:25\"\n",
        );
        let (merged, restart) = old.reloaded(new);
        assert_eq!(merged.limits.max_recipients, 5);
        assert_eq!(merged.limits.max_connections, old.limits.max_connections);
        assert_eq!(merged.tenants[0].networks[0].to_string(), "192.0.2.0/24");
        assert_eq!(merged.hostname, old.hostname);
        assert_eq!(merged.routes.len(), 1);
        assert_eq!(restart, ["hostname", "limits.max_connections"]);
    }

    #[test]
    fn tenants_are_added_changed_and_removed_at_once() {
        let old = parse("[[tenant]]\nid = \"a\"\n[[tenant]]\nid = \"gone\"\n");
        let new = parse(
            "[[tenant]]\nid = \"a\"\n[tenant.retention]\nlog_days = 30\n\
             [[tenant]]\nid = \"b\"\nnetworks = [\"192.0.2.0/24\"]\n",
        );
        let (merged, restart) = old.reloaded(new);
        let ids: Vec<&str> = merged.tenants.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(merged.tenants[0].retention.log_days, 30);
        assert!(restart.is_empty(), "{restart:?}");
    }
}
