//! `sealgate envelope`: seal a message into the browser envelope, or open one.

use super::*;

#[derive(Subcommand)]
pub(super) enum EnvelopeCommand {
    /// Seal MESSAGE (an .eml file) into an opener page; prints the password.
    Seal {
        message: PathBuf,
        /// Where the opener page goes.
        #[arg(long, short, default_value = "secure-message.html")]
        out: PathBuf,
        /// Language of the opener page: en or de (default: seal.language).
        #[arg(long)]
        lang: Option<String>,
        /// Also write the notification mail that carries the page, from the
        /// message's sender to its recipients, ready to send.
        #[arg(long)]
        mail: Option<PathBuf>,
    },
    /// Open an opener page or a raw envelope; reads the password from
    /// standard input and writes the original message.
    Open {
        file: PathBuf,
        /// Where the original message goes.
        #[arg(long, short, default_value = "message.eml")]
        out: PathBuf,
    },
}

pub(super) fn envelope(config: Config, command: EnvelopeCommand) -> anyhow::Result<()> {
    use crate::seal::{self, opener::Texts, password::Password};
    match command {
        EnvelopeCommand::Seal {
            message,
            out,
            lang,
            mail,
        } => {
            let raw = std::fs::read(&message)
                .with_context(|| format!("cannot read {}", message.display()))?;
            let lang = lang.unwrap_or_else(|| config.seal.language.clone());
            let Some(texts) = Texts::for_language(&lang) else {
                bail!("no opener texts for language {lang:?} (en, de)");
            };
            let password = Password::generate();
            let envelope = seal::seal_message(
                &raw,
                &password,
                config.seal.iterations,
                config.seal.max_size,
            )
            .with_context(|| format!("cannot seal {}", message.display()))?;
            std::fs::write(&out, seal::opener::render(&envelope, &texts))
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("sealed {} into {}", message.display(), out.display());
            if let Some(path) = mail {
                let (from, to) = seal::content::addresses_of(&raw);
                let Some(from) = from else {
                    bail!(
                        "{} has no From address to send the notification from",
                        message.display()
                    );
                };
                if to.is_empty() {
                    bail!("{} has no To or Cc address to notify", message.display());
                }
                let id = format!("{:016x}.sealed@{}", rand::random::<u64>(), config.hostname);
                let notification = seal::notify::notification(
                    &envelope,
                    &texts,
                    &seal::notify::Words::for_language(&lang),
                    &seal::notify::Addressing {
                        from: &from,
                        to: &to,
                        message_id: &id,
                        date: chrono::Utc::now().timestamp(),
                    },
                );
                std::fs::write(&path, notification)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!(
                    "notification mail for {} in {}",
                    to.join(", "),
                    path.display()
                );
            }
            println!("{}", password.display());
            Ok(())
        }
        EnvelopeCommand::Open { file, out } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let password = read_password("password:")?;
            let content = seal::open_file(&bytes, &password)
                .with_context(|| format!("cannot open {}", file.display()))?;
            std::fs::write(&out, content.original()?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "opened {}: {:?} written to {}",
                file.display(),
                content.header("Subject").unwrap_or_default(),
                out.display()
            );
            Ok(())
        }
    }
}
