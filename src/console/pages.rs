//! The console's pages, in English and German. maud escapes every value
//! interpolated into markup, so a subject, HELO name or certificate
//! subject is text on the page, never markup; nothing here builds HTML by
//! string concatenation. Charts are inline SVG drawn from the totals.

use maud::{DOCTYPE, Markup, html};

use super::index::{ChainStatus, Filter, Page, STATUSES, Totals, TxRow};
use super::query::{Overview, QueueFilter, QueuePage};
use super::session::Lang;
use super::state::User;
use crate::policy::memory::DomainRecord;
use crate::report::event::EventData;
use crate::report::log::Stored;
use crate::spool::MessageDetail;
use crate::util::rfc3339;

pub const STYLE: &str = include_str!("console.css");

/// A word or phrase of the interface in the page's language.
pub fn text(lang: Lang, key: &str) -> &'static str {
    let (en, de) = match key {
        "dashboard" => ("Dashboard", "Übersicht"),
        "transactions" => ("Transactions", "Transaktionen"),
        "queue" => ("Queue", "Warteschlange"),
        "domains" => ("Domains", "Domains"),
        "policies" => ("Policies", "Richtlinien"),
        "reports" => ("Reports", "Berichte"),
        "full-walk" => ("Full verification", "Vollständige Prüfung"),
        "not-walked" => (
            "not run in this process yet",
            "in diesem Prozess noch nicht gelaufen",
        ),
        "verify" => ("Verify now", "Jetzt prüfen"),
        "download" => ("Download the log", "Protokoll herunterladen"),
        "download-note" => (
            "A tenant's records of a period as JSON lines with their hashes, ending in the chain head signed with the gateway's key (docs/auditors.md).",
            "Die Einträge eines Mandanten für einen Zeitraum als JSON-Zeilen mit ihren Hashes, am Ende der mit dem Schlüssel des Gateways signierte Kettenkopf (docs/auditors.md).",
        ),
        "tlsrpt-received" => (
            "TLS-RPT reports received (30 days)",
            "Empfangene TLS-RPT-Berichte (30 Tage)",
        ),
        "tlsrpt-received-note" => (
            "What other senders saw of TLS to our domains (POSTed to /tlsrpt).",
            "Was andere Absender von TLS zu unseren Domains sahen (per POST an /tlsrpt).",
        ),
        "organization" => ("Reporter", "Berichtender"),
        "period" => ("Period", "Zeitraum"),
        "successful" => ("Successful", "Erfolgreich"),
        "failed" => ("Failed", "Fehlgeschlagen"),
        "failure-kinds" => ("Failure types", "Fehlerarten"),
        "tlsrpt-sent" => (
            "TLS-RPT reports sent (30 days)",
            "Gesendete TLS-RPT-Berichte (30 Tage)",
        ),
        "general-policy" => ("General policy", "Allgemeine Richtlinie"),
        "validate-save" => ("Validate and save", "Prüfen und speichern"),
        "logout" => ("Log out", "Abmelden"),
        "login" => ("Log in", "Anmelden"),
        "account" => ("Account", "Konto"),
        "password" => ("Password", "Passwort"),
        "login-failed" => (
            "Wrong account name or password.",
            "Kontoname oder Passwort falsch.",
        ),
        "login-wait" => (
            "Too many failed attempts: wait a moment before the next one.",
            "Zu viele Fehlversuche: bitte einen Moment warten.",
        ),
        "login-stale" => (
            "The login form had expired; please try again.",
            "Das Anmeldeformular war abgelaufen; bitte erneut versuchen.",
        ),
        "queued" => ("Messages queued", "Nachrichten in der Warteschlange"),
        "oldest" => ("Oldest", "Älteste"),
        "per-day" => (
            "Recipients per day, by what became of them",
            "Empfänger pro Tag, nach Ergebnis",
        ),
        "by-level" => (
            "By level reached (14 days)",
            "Nach erreichter Stufe (14 Tage)",
        ),
        "reasons" => (
            "Top deferral reasons (14 days)",
            "Häufigste Gründe für Zurückstellung (14 Tage)",
        ),
        "downgraded" => (
            "Domains below their best level",
            "Domains unter ihrer besten Stufe",
        ),
        "chains" => (
            "Transaction log chains",
            "Ketten des Transaktionsprotokolls",
        ),
        "tenant" => ("Tenant", "Mandant"),
        "records" => ("Records", "Einträge"),
        "head" => ("Head", "Kopf"),
        "state" => ("State", "Zustand"),
        "intact" => ("intact", "intakt"),
        "none" => ("none", "keine"),
        "search" => ("Search", "Suchen"),
        "sender" => ("Sender", "Absender"),
        "recipient" => ("Recipient", "Empfänger"),
        "domain" => ("Domain", "Domain"),
        "message-id" => ("Message-ID", "Message-ID"),
        "queue-id" => ("Queue ID", "Queue-ID"),
        "level" => ("Level", "Stufe"),
        "class" => ("Class", "Klasse"),
        "status" => ("Status", "Status"),
        "time" => ("Time", "Zeit"),
        "from" => ("From", "Von"),
        "to" => ("To", "Bis"),
        "relay" => ("Relay", "Relay"),
        "detail" => ("Detail", "Detail"),
        "newest" => ("newest first", "neueste zuerst"),
        "oldest-first" => ("oldest first", "älteste zuerst"),
        "next" => ("Next page", "Nächste Seite"),
        "export" => ("Export", "Exportieren"),
        "nothing" => ("Nothing found.", "Nichts gefunden."),
        "any" => ("any", "alle"),
        "retry" => ("Retry now", "Jetzt erneut"),
        "delete" => ("Delete", "Löschen"),
        "hold" => ("Hold", "Anhalten"),
        "held" => ("held", "angehalten"),
        "release" => ("Release", "Freigeben"),
        "bounce" => ("Bounce", "Zurückweisen"),
        "reason" => ("reason", "Grund"),
        "reason-help" => (
            "Why: kept in the log; required for bounce and delete, and the sender reads it in the bounce",
            "Warum: steht im Protokoll; nötig für Zurückweisen und Löschen, der Absender liest ihn in der Unzustellbarkeitsnachricht",
        ),
        "received" => ("Received", "Empfangen"),
        "pending" => ("Pending", "Offen"),
        "next-attempt" => ("Next attempt", "Nächster Versuch"),
        "last-reply" => ("Last reply", "Letzte Antwort"),
        "best" => ("Best", "Beste"),
        "last" => ("Last", "Letzte"),
        "since" => ("Below best since", "Unter bester Stufe seit"),
        "standing" => ("Profile and exceptions", "Profil und Ausnahmen"),
        "domains-after" => ("Domains after", "Domains nach"),
        "confirm" => ("Accept as best", "Als beste annehmen"),
        "message" => ("Message", "Nachricht"),
        "evidence" => (
            "Every record of this message, as the log holds it",
            "Alle Einträge dieser Nachricht, wie das Protokoll sie hält",
        ),
        "in-queue" => ("In the queue", "In der Warteschlange"),
        "filter" => ("Filter", "Filtern"),
        "shown-of" => ("shown of", "angezeigt von"),
        "hosts" => ("Hosts", "Hosts"),
        "checks" => ("Checks", "Prüfungen"),
        "decision" => ("Decision", "Entscheidung"),
        _ => ("?", "?"),
    };
    match lang {
        Lang::En => en,
        Lang::De => de,
    }
}

pub(super) fn layout(
    lang: Lang,
    user: Option<&User>,
    title: &str,
    active: &str,
    body: Markup,
) -> Markup {
    let t = |k| text(lang, k);
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sealgate" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                header.top {
                    a.brand href="/" { "sealgate" }
                    @if let Some(user) = user {
                        nav {
                            @for (href, key) in [("/", "dashboard"), ("/transactions", "transactions"), ("/queue", "queue"), ("/domains", "domains"), ("/policies", "policies"), ("/reports", "reports")] {
                                a href=(href) class=(if key == active { "active" } else { "" }) { (t(key)) }
                            }
                        }
                        div.who {
                            span.account { (user.account.name) }
                            span.role { (user.account.role.name()) @if let Some(tenant) = user.scope() { " · " (tenant) } }
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(user.csrf.as_deref().unwrap_or(""));
                                button.link type="submit" { (t("logout")) }
                            }
                        }
                    }
                    div.lang {
                        a href="/lang/en" class=(if lang == Lang::En { "active" } else { "" }) { "EN" }
                        a href="/lang/de" class=(if lang == Lang::De { "active" } else { "" }) { "DE" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn login(lang: Lang, token: &str, error: Option<&str>) -> Markup {
    let t = |k| text(lang, k);
    layout(
        lang,
        None,
        t("login"),
        "",
        html! {
            form.login method="post" action="/login" {
                @if let Some(e) = error { p.error role="alert" { (e) } }
                input type="hidden" name="csrf" value=(token);
                label { (t("account")) input name="name" autocomplete="username" required autofocus; }
                label { (t("password")) input name="password" type="password" autocomplete="current-password" required; }
                label { (t("code")) input name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}"; }
                button type="submit" { (t("login")) }
            }
        },
    )
}

fn ago(now: i64, at: i64) -> String {
    let s = (now - at).max(0);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// Stacked bars of recipients per day and status.
fn chart(lang: Lang, totals: &Totals, now: i64) -> Markup {
    const DAYS: i64 = 14;
    const W: i64 = 80;
    const H: i64 = 160;
    let first = now.div_euclid(86_400) - DAYS + 1;
    let count = |day: i64, status: &str| {
        totals
            .by_day
            .iter()
            .filter(|c| c.day.div_euclid(86_400) == day && c.status == status)
            .map(|c| c.n)
            .sum::<i64>()
    };
    let max = (first..first + DAYS)
        .map(|d| STATUSES.iter().map(|s| count(d, s)).sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1);
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {} {}", DAYS * W, H + 20)) role="img" aria-label=(text(lang, "per-day")) {
                @for (i, day) in (first..first + DAYS).enumerate() {
                    @let x = i as i64 * W + 4;
                    @let mut y = H;
                    @for status in STATUSES {
                        @let n = count(day, status);
                        @if n > 0 {
                            @let h = (n * H / max).max(1);
                            @let top = { y -= h; y };
                            rect class=(format!("s-{status}")) x=(x) y=(top) width=(W - 8) height=(h) {
                                title { (rfc3339(day * 86_400).get(..10).unwrap_or("")) ": " (n) " " (status) }
                            }
                        }
                    }
                    text.axis x=(x + (W - 8) / 2) y=(H + 14) { (rfc3339(day * 86_400).get(8..10).unwrap_or("")) }
                }
            }
            figcaption {
                @for status in STATUSES { span class=(format!("key s-{status}")) { (status) } }
            }
        }
    }
}

pub fn dashboard(lang: Lang, user: &User, o: &Overview) -> Markup {
    let t = |k| text(lang, k);
    layout(
        lang,
        Some(user),
        t("dashboard"),
        "dashboard",
        html! {
            section.cards {
                div.card {
                    div.label { (t("queued")) }
                    div.figure id="queue-depth" { (o.depth.messages) }
                    div.sub { (t("oldest")) ": " @if let Some(at) = o.depth.oldest { (ago(o.now, at)) } @else { "–" } }
                }
                @for c in &o.totals.by_level {
                    div.card {
                        div.label { (t("level")) " " span class=(format!("lvl lvl-{}", c.label)) { (c.label) } }
                        div.figure { (c.n) }
                        div.sub { "14 d" }
                    }
                }
            }
            h2 { (t("per-day")) }
            (chart(lang, &o.totals, o.now))
            div.columns {
                section {
                    h2 { (t("reasons")) }
                    @if o.totals.reasons.is_empty() { p.muted { (t("none")) } } @else {
                        table { @for c in &o.totals.reasons { tr { td { (c.label) } td.num { (c.n) } } } }
                    }
                }
                section {
                    h2 { (t("downgraded")) }
                    @if o.downgraded.is_empty() { p.muted { (t("none")) } } @else {
                        table {
                            tr { th { (t("domain")) } th { (t("best")) } th { (t("last")) } th { (t("since")) } }
                            @for d in &o.downgraded {
                                tr {
                                    td { (d.domain) }
                                    td { span class=(format!("lvl lvl-{}", d.best.name())) { (d.best.name()) } }
                                    td { span class=(format!("lvl lvl-{}", d.last.name())) { (d.last.name()) } }
                                    td { (d.downgrade_since.map(rfc3339).unwrap_or_default()) }
                                }
                            }
                        }
                    }
                }
            }
            h2 { (t("chains")) }
            (chains(lang, &o.chains))
        },
    )
}

fn chains(lang: Lang, chains: &[ChainStatus]) -> Markup {
    let t = |k| text(lang, k);
    html! {
        table.chains {
            tr { th { (t("tenant")) } th.num { (t("records")) } th { (t("head")) } th { (t("state")) } }
            @for c in chains {
                tr {
                    td { (c.tenant) }
                    td.num { (c.records) }
                    td { code { (c.head_seq) " " (c.head_hash.get(..16).unwrap_or("")) "…" } }
                    td {
                        @match &c.broken {
                            None => span.ok { (t("intact")) },
                            Some(why) => span.bad { "BROKEN: " (why) },
                        }
                    }
                }
            }
        }
    }
}

/// A link to the same search with other values.
fn query(filter: &Filter) -> String {
    serde_urlencoded::to_string(filter).unwrap_or_default()
}

fn select(name: &str, current: &str, options: &[&str], any: &str) -> Markup {
    html! {
        select name=(name) {
            option value="" { (any) }
            @for o in options {
                option value=(o) selected[*o == current] { (o) }
            }
        }
    }
}

pub fn transactions(lang: Lang, user: &User, filter: &Filter, page: &Page) -> Markup {
    let t = |k| text(lang, k);
    html! {
        (layout(lang, Some(user), t("transactions"), "transactions", html! {
            form.filter method="get" action="/transactions" {
                label { (t("sender")) input name="sender" value=(filter.sender); }
                label { (t("recipient")) input name="recipient" value=(filter.recipient); }
                label { (t("domain")) input name="domain" value=(filter.domain); }
                label { (t("message-id")) input name="message_id" value=(filter.message_id); }
                label { (t("queue-id")) input name="queue_id" value=(filter.queue_id); }
                label { (t("level")) (select("level", &filter.level, &["none", "plaintext", "encrypted", "authenticated", "qualified"], t("any"))) }
                label { (t("class")) (select("class", &filter.class, &["normal", "high", "confidential"], t("any"))) }
                label { (t("status")) (select("status", &filter.status, &STATUSES, t("any"))) }
                label { (t("time")) select name="sort" {
                    option value="" { (t("newest")) }
                    option value="old" selected[filter.oldest_first()] { (t("oldest-first")) }
                } }
                button type="submit" { (t("search")) }
            }
            p.actions {
                (t("export")) ": "
                a href=(format!("/transactions/export?format=csv&{}", query(&Filter { after: String::new(), ..filter.clone() }))) { "CSV" }
                " · "
                a href=(format!("/transactions/export?format=jsonl&{}", query(&Filter { after: String::new(), ..filter.clone() }))) { "JSON lines" }
            }
            @if page.rows.is_empty() { p.muted id="no-results" { (t("nothing")) } } @else {
                table.tx id="results" {
                    tr {
                        th { (t("time")) } th { (t("tenant")) } th { (t("queue-id")) } th { (t("sender")) }
                        th { (t("recipient")) } th { (t("level")) } th { (t("class")) } th { (t("status")) } th { (t("relay")) }
                    }
                    @for r in &page.rows { (row(r)) }
                }
            }
            @if let Some(next) = &page.next {
                p.pager { a.button id="next-page" href=(format!("/transactions?{}", query(&Filter { after: next.clone(), ..filter.clone() }))) { (t("next")) " →" } }
            }
        }))
    }
}

fn row(r: &TxRow) -> Markup {
    html! {
        tr {
            td.nowrap { (rfc3339(r.at)) }
            td { (r.tenant) }
            td { a href=(format!("/message/{}", r.queue_id)) { code { (r.queue_id) } } }
            td { (r.sender) }
            td { (r.recipient) }
            td { span class=(format!("lvl lvl-{}", r.level)) { (r.level) } }
            td { (r.class) }
            td { span class=(format!("st st-{}", r.status)) { (r.status) } }
            td.small { (r.relay) br; span.muted { (r.detail) } }
        }
    }
}

pub fn message(
    lang: Lang,
    user: &User,
    id: &str,
    tenant: &str,
    records: &[Stored],
    queued: Option<&MessageDetail>,
) -> Markup {
    let t = |k| text(lang, k);
    layout(
        lang,
        Some(user),
        &format!("{} {id}", t("message")),
        "transactions",
        html! {
            p.muted { (t("tenant")) ": " (tenant) ". " (t("evidence")) "." }
            @if let Some(q) = queued {
                section.card.wide {
                    h2 { (t("in-queue")) }
                    table {
                        tr { th { (t("recipient")) } th { (t("status")) } th { "Attempts" } th { (t("next-attempt")) } th { (t("last-reply")) } }
                        @for r in &q.recipients {
                            tr { td { (r.address) } td { (format!("{:?}", r.status).to_lowercase()) } td.num { (r.attempts) } td { (rfc3339(r.next_attempt)) } td.small { (r.last_reply.as_deref().unwrap_or("")) } }
                        }
                    }
                }
            }
            @for r in records { (record(lang, r)) }
        },
    )
}

fn record(lang: Lang, r: &Stored) -> Markup {
    let t = |k| text(lang, k);
    let event = EventData::parse(&r.kind, &r.data);
    html! {
        section.record id=(format!("record-{}", r.seq)) {
            h2 { span.kind { (r.kind) } " " span.muted { "#" (r.seq) " · " (rfc3339(r.at)) } }
            @match event {
                Ok(EventData::Received(m)) => {
                    dl {
                        dt { "client" } dd { (m.client) }
                        @if let Some(l) = &m.listener { dt { "listener" } dd { (l) } }
                        @if let Some(tls) = &m.tls { dt { "TLS" } dd { (tls.version) " " (tls.cipher_suite) " " (tls.kx_group.as_deref().unwrap_or("")) } }
                        dt { (t("sender")) } dd { (m.sender) }
                        dt { (t("recipient")) } dd { (m.recipients.join(", ")) }
                        @if let Some(id) = &m.message_id { dt { (t("message-id")) } dd { (id) } }
                        dt { "size" } dd { (m.size) " bytes" }
                        @if let Some(x) = &m.tls_request { dt { "TLS request" } dd { (x) } }
                        @if let Some(x) = &m.content { dt { "content" } dd { (x) } }
                    }
                }
                Ok(EventData::Classified(c)) => {
                    table {
                        tr { th { (t("recipient")) } th { (t("class")) } th { "Rules" } }
                        @for x in &c.recipients { tr { td { (x.address) } td { (x.class.name()) } td.small { (x.by.join("; ")) } } }
                    }
                }
                Ok(EventData::Attempt(a)) => {
                    p { (t("domain")) ": " strong { (a.domain) } }
                    @if !a.checks.is_empty() {
                        h3 { (t("domain")) " · " (t("checks")) }
                        (checks(&a.checks))
                    }
                    @if let Some(v) = &a.verdict {
                        h3 { "Verdict: " (v.mx_host) " [" (v.address) "]" }
                        p {
                            "observed " span class=(format!("lvl lvl-{}", v.observed_level.name())) { (v.observed_level.name()) }
                            " · usable at " @match v.level { Some(l) => span class=(format!("lvl lvl-{}", l.name())) { (l.name()) }, None => span.bad { "refused" } }
                        }
                        @for f in &v.refusals { p.bad { (f.reason.name()) ": " (f.detail) " — " (f.reason.rule()) } }
                        @if let Some(tls) = &v.tls { (tls_facts(tls)) }
                        (checks(&v.checks))
                    }
                    @if !a.hosts.is_empty() {
                        h3 { (t("hosts")) }
                        table {
                            tr { th { "Host" } th { "Address" } th { "Observed" } th { "Usable" } th { "Refusals / error" } }
                            @for h in &a.hosts {
                                tr {
                                    td { (h.host) " (" (h.preference) ")" }
                                    td { (h.address.as_deref().unwrap_or("–")) }
                                    td { (h.observed_level.map_or("–", |l| l.name())) }
                                    td { (h.level.map_or("–", |l| l.name())) }
                                    td.small {
                                        @for f in &h.refusals { (f.reason.name()) ": " (f.detail) br; }
                                        (h.error.as_deref().unwrap_or(""))
                                    }
                                }
                            }
                        }
                    }
                    h3 { (t("decision")) }
                    table {
                        tr { th { (t("recipient")) } th { (t("class")) } th { "Required" } th { "Action" } th { (t("reason")) } th { "Result" } th { (t("detail")) } }
                        @for p in &a.recipients {
                            tr {
                                td { (p.address) }
                                td { (p.class.map_or("", |c| c.name())) }
                                td { (p.required.as_deref().unwrap_or("")) }
                                td { (p.action.as_deref().unwrap_or("")) }
                                td.small { (p.reason.as_deref().unwrap_or("")) }
                                td { (p.outcome.name()) " " (p.status) @if let Some(e) = &p.end_to_end { " · " (e) } }
                                td.small { (p.detail) }
                            }
                        }
                    }
                }
                Ok(EventData::Deleted(d)) => { p { "deleted by " (d.by) @if let Some(r) = &d.reason { ": " (r) } } }
                Ok(EventData::Held(h)) => {
                    p { (if h.held { "held by " } else { "released by " }) (h.by) @if let Some(r) = &h.reason { ": " (r) } }
                }
                Ok(EventData::Pruned(p)) => { p { "records " (p.from_seq) "–" (p.through_seq) " removed by retention" } }
                Ok(EventData::Console(c)) => {
                    p { (c.action) " by " strong { (c.account) } " (" (c.role) ") from " (c.source)
                        @if let Some(x) = &c.target { " · " (x) }
                        @if let Some(x) = &c.detail { " · " (x) } }
                }
                Err(e) => { p.bad { (e.to_string()) } }
            }
            p.hash { "hash " code { (crate::util::hex(&r.hash)) } }
        }
    }
}

fn checks(checks: &[crate::qualify::Check]) -> Markup {
    html! {
        table.checks {
            @for c in checks {
                tr {
                    td { (c.name.name()) }
                    td { span class=(format!("ck ck-{}", c.status.name())) { (c.status.name()) } }
                    td.small { (c.detail) }
                }
            }
        }
    }
}

fn tls_facts(tls: &crate::qualify::TlsFacts) -> Markup {
    html! {
        dl {
            dt { "protocol" } dd { (tls.version) }
            dt { "suite" } dd { (tls.cipher_suite) }
            dt { "group" } dd { (tls.kx_group.as_deref().unwrap_or("–")) }
            dt { "peer key" } dd { (tls.peer_key.as_ref().map(|k| k.to_string()).unwrap_or_default()) }
            dt { "OCSP stapled" } dd { (if tls.ocsp_stapled { "yes" } else { "no" }) }
        }
        @if !tls.chain.is_empty() {
            table.small {
                tr { th { "Subject" } th { "Issuer" } th { "Not after" } th { "SHA-256" } }
                @for c in &tls.chain {
                    tr { td { (c.subject) } td { (c.issuer) } td { (c.not_after) } td { code { (c.sha256.get(..16).unwrap_or("")) "…" } } }
                }
            }
        }
    }
}

pub fn queue(lang: Lang, user: &User, f: &QueueFilter, page: &QueuePage) -> Markup {
    let t = |k| text(lang, k);
    let csrf = user.csrf.as_deref().unwrap_or("");
    let acts = user.account.role.acts();
    let next = page.next.map(|n| {
        let after = n.to_string();
        let pairs = [
            ("sender", f.sender.as_str()),
            ("tenant", f.tenant.as_str()),
            ("after", after.as_str()),
        ];
        format!(
            "/queue?{}",
            serde_urlencoded::to_string(pairs).unwrap_or_default()
        )
    });
    layout(
        lang,
        Some(user),
        t("queue"),
        "queue",
        html! {
            form.filter method="get" action="/queue" {
                label { (t("sender")) input name="sender" value=(f.sender); }
                @if user.scope().is_none() { label { (t("tenant")) input name="tenant" value=(f.tenant); } }
                button type="submit" { (t("filter")) }
            }
            @if let Some(depth) = page.depth {
                p.muted { (page.messages.len()) " " (t("shown-of")) " " (depth.messages) }
            }
            table.queue id="queue" {
                tr {
                    th { (t("queue-id")) } th { (t("tenant")) } th { (t("sender")) } th { (t("received")) }
                    th.num { (t("pending")) } th { (t("next-attempt")) } th { (t("last-reply")) }
                    @if acts { th {} }
                }
                @for m in &page.messages {
                    tr {
                        td {
                            a href=(format!("/message/{}", m.id)) { code { (m.id) } }
                            @if m.held { " " span.held { (t("held")) } }
                        }
                        td { (m.tenant.0) }
                        td { (m.sender) }
                        td.nowrap { (rfc3339(m.received_at)) }
                        td.num { (m.pending) "/" (m.recipients) }
                        td.nowrap { @if !m.held { (m.next_attempt.map(rfc3339).unwrap_or_default()) } }
                        td.small { (m.last_reply.as_deref().unwrap_or("")) }
                        @if acts {
                            td.act {
                                // One form; each button posts it to its own action.
                                form method="post" action=(format!("/queue/{}/retry", m.id)) {
                                    input type="hidden" name="csrf" value=(csrf);
                                    input name="reason" placeholder=(t("reason")) title=(t("reason-help")) maxlength="500";
                                    @if m.held {
                                        button type="submit" class="release" formaction=(format!("/queue/{}/release", m.id)) { (t("release")) }
                                    } @else {
                                        button type="submit" class="retry" { (t("retry")) }
                                        button type="submit" class="hold" formaction=(format!("/queue/{}/hold", m.id)) { (t("hold")) }
                                    }
                                    button.danger type="submit" class="bounce" formaction=(format!("/queue/{}/bounce", m.id)) { (t("bounce")) }
                                    button.danger type="submit" class="delete" formaction=(format!("/queue/{}/delete", m.id)) { (t("delete")) }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = next {
                p.pager { a.button id="next-page" href=(next) { (t("next")) " →" } }
            }
        },
    )
}

pub fn domains(
    lang: Lang,
    user: &User,
    records: &[DomainRecord],
    policy: &crate::policy::rules::Policy,
    next: Option<&str>,
) -> Markup {
    let now = crate::util::now();
    let t = |k| text(lang, k);
    let csrf = user.csrf.as_deref().unwrap_or("");
    let confirms = user.account.role.acts() && user.scope().is_none();
    layout(
        lang,
        Some(user),
        t("domains"),
        "domains",
        html! {
            form.filter method="get" action="/domains" {
                label { (t("domains-after")) input name="after"; }
                button type="submit" { (t("filter")) }
            }
            table.domains id="domains" {
                tr { th { (t("domain")) } th { (t("best")) } th { (t("last")) } th { (t("since")) } th { (t("hosts")) } th { (t("standing")) } @if confirms { th {} } }
                @for d in records {
                    @let (profile, exceptions) = policy.standing(&d.domain);
                    tr {
                        td { (d.domain) }
                        td { span class=(format!("lvl lvl-{}", d.best.name())) { (d.best.name()) } }
                        td { span class=(format!("lvl lvl-{}", d.last.name())) { (d.last.name()) } " " span.muted { (rfc3339(d.last_at)) } }
                        td { (d.downgrade_since.map(rfc3339).unwrap_or_default()) }
                        td.small { @for h in &d.hosts { (h.mx_host) " [" (h.address) "] " (h.level.name()) @for s in &h.shortfalls { br; span.muted { (s) } } br; } }
                        td.small {
                            @if let Some(p) = profile {
                                "profile " code { (p.pattern) }
                                @if let Some(c) = p.min_class { ": at least " (c.name()) }
                                @if let Some(l) = p.required { ", at least " (l.name()) }
                                @if let Some(n) = &p.note { " (" (n) ")" }
                                br;
                            }
                            @for x in &exceptions {
                                "exception: " (x.level.name()) " until " (rfc3339(x.expires))
                                @if x.expires <= now { " " span.bad { "expired" } }
                                ", approved by " (x.approved_by) ": " (x.reason)
                                br;
                            }
                        }
                        @if confirms {
                            td { @if d.downgrade_since.is_some() {
                                form method="post" action=(format!("/domains/{}/confirm", d.domain)) {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" { (t("confirm")) }
                                }
                            } }
                        }
                    }
                }
            }
            @if let Some(after) = next {
                p.pager { a.button href=(format!("/domains?{}", serde_urlencoded::to_string([("after", after)]).unwrap_or_default())) { (t("next")) " →" } }
            }
        },
    )
}
