//! Manual pages and shell completions for the package, generated from what
//! they describe: sealgate(8) and a page per subcommand from the command
//! line definition, sealgate.toml(5) from docs/configuration.md, and the
//! bash, zsh and fish completions. `sealgate generate DIR` writes them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap_complete::Shell;
use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use roff::{Inline, Roff, bold, italic, roman};

const CONFIGURATION: &str = include_str!("../../docs/configuration.md");

/// Writes `DIR/man8/*.8`, `DIR/man5/sealgate.toml.5` and
/// `DIR/completions/{sealgate.bash,_sealgate,sealgate.fish}`; returns the
/// files written.
pub fn generate(cmd: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man8 = dir.join("man8");
    std::fs::create_dir_all(&man8).with_context(|| format!("cannot create {}", man8.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    command_pages(&cmd, &man8, &mut written)?;

    let man5 = dir.join("man5");
    std::fs::create_dir_all(&man5).with_context(|| format!("cannot create {}", man5.display()))?;
    let page = man5.join("sealgate.toml.5");
    std::fs::write(&page, configuration_page(CONFIGURATION))
        .with_context(|| format!("cannot write {}", page.display()))?;
    written.push(page);

    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let file = clap_complete::generate_to(shell, &mut cmd, "sealgate", &completions)
            .with_context(|| format!("cannot write the {shell} completion"))?;
        written.push(file);
    }
    Ok(written)
}

/// sealgate.8 and, for each visible subcommand, sealgate-NAME.8.
fn command_pages(
    cmd: &clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command_pages(sub, dir, written)?;
    }
    let page = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("sealgate {}", env!("CARGO_PKG_VERSION")));
    let file = page
        .generate_to(dir)
        .with_context(|| format!("cannot write {}", page.get_filename()))?;
    written.push(file);
    Ok(())
}

/// The configuration reference as a man page: headings become sections,
/// each table row a tagged paragraph (the key, then its other columns).
fn configuration_page(markdown: &str) -> String {
    let mut roff = Roff::new();
    roff.control(
        "TH",
        [
            "SEALGATE.TOML",
            "5",
            "",
            &format!("sealgate {}", env!("CARGO_PKG_VERSION")),
            "File Formats Manual",
        ],
    );
    roff.control("SH", ["NAME"]);
    roff.text([roman(
        "sealgate.toml - configuration file of the sealgate SMTP relay gateway",
    )]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([bold("/etc/sealgate/sealgate.toml")]);

    let mut inline: Vec<Inline> = Vec::new();
    // The same text without styles, for headings and column names.
    let mut words = String::new();
    let mut style = (false, false); // (bold, italic)
    let mut header: Vec<String> = Vec::new();
    let mut row: Vec<Vec<Inline>> = Vec::new();
    let mut in_head = false;
    let mut in_code_block = false;
    for event in Parser::new_ext(markdown, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. } | Tag::Paragraph | Tag::TableCell | Tag::Item) => {
                inline.clear();
                words.clear();
            }
            Event::End(TagEnd::Heading(level)) => {
                let title = words.to_uppercase();
                match level {
                    HeadingLevel::H1 => {
                        roff.control("SH", ["DESCRIPTION"]);
                    }
                    HeadingLevel::H2 => {
                        roff.control("SH", [title.as_str()]);
                    }
                    _ => {
                        roff.control("SS", [words.as_str()]);
                    }
                }
            }
            Event::End(TagEnd::Paragraph) => {
                roff.control("PP", []);
                roff.text(std::mem::take(&mut inline));
            }
            Event::Start(Tag::TableHead) => {
                in_head = true;
                header.clear();
            }
            Event::End(TagEnd::TableHead) => in_head = false,
            Event::End(TagEnd::TableCell) => {
                if in_head {
                    header.push(words.clone());
                } else {
                    row.push(std::mem::take(&mut inline));
                }
            }
            Event::End(TagEnd::TableRow) => {
                let mut cells = std::mem::take(&mut row).into_iter();
                let Some(key) = cells.next() else { continue };
                roff.control("TP", []);
                roff.text(key);
                let rest: Vec<Vec<Inline>> = cells.collect();
                let last = rest.len().saturating_sub(1);
                for (i, cell) in rest.into_iter().enumerate() {
                    if i == last {
                        roff.control("br", []);
                        roff.text(cell);
                    } else {
                        let name = header.get(i + 1).cloned().unwrap_or_default();
                        let mut line = vec![italic(name), roman(": ")];
                        line.extend(cell);
                        roff.control("br", []);
                        roff.text(line);
                    }
                }
            }
            Event::Start(Tag::CodeBlock(_)) => {
                in_code_block = true;
                roff.control("PP", []);
                roff.control("nf", []);
                roff.control("RS", ["4"]);
            }
            Event::End(TagEnd::CodeBlock) => {
                in_code_block = false;
                roff.control("RE", []);
                roff.control("fi", []);
            }
            Event::End(TagEnd::Item) => {
                roff.control("IP", ["\\(bu", "2"]);
                roff.text(std::mem::take(&mut inline));
            }
            Event::Start(Tag::Strong) => style.0 = true,
            Event::End(TagEnd::Strong) => style.0 = false,
            Event::Start(Tag::Emphasis) => style.1 = true,
            Event::End(TagEnd::Emphasis) => style.1 = false,
            Event::Text(text) if in_code_block => {
                for line in text.lines() {
                    roff.text([roman(line)]);
                }
            }
            Event::Text(text) => {
                words.push_str(&text);
                inline.push(match style {
                    (true, _) => bold(text.to_string()),
                    (false, true) => italic(text.to_string()),
                    _ => roman(text.to_string()),
                })
            }
            Event::Code(code) => {
                words.push_str(&code);
                inline.push(bold(code.to_string()));
            }
            Event::SoftBreak | Event::HardBreak => {
                words.push(' ');
                inline.push(roman(" "));
            }
            _ => {}
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([bold("sealgate"), roman("(8)")]);
    roff.render()
}
