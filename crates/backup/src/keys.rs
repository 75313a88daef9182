//! Keys: an age X25519 identity (private, kept offline) and its recipient (public). Creating a
//! backup needs only recipients; verify and restore need the identity.

use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

/// Writes a new identity to `out` (mode 0600, never overwritten) and its recipient to `out.pub`.
/// Answers the recipient.
pub fn generate(out: &Path) -> anyhow::Result<String> {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating key file {} (it must not exist yet)", out.display()))?;
    writeln!(file, "# rananeeti backup key: keep it offline; restore and verify need it")?;
    writeln!(file, "# public key: {recipient}")?;
    writeln!(file, "{}", identity.to_string().expose_secret())?;
    file.sync_all()?;
    let public = public_path(out);
    std::fs::write(&public, format!("{recipient}\n")).with_context(|| format!("writing {}", public.display()))?;
    Ok(recipient)
}

pub fn public_path(out: &Path) -> std::path::PathBuf {
    let mut name = out.as_os_str().to_os_string();
    name.push(".pub");
    name.into()
}

/// The recipients in a public-key file (one `age1...` per line; `#` comments).
pub fn read_recipients(path: &Path) -> anyhow::Result<Vec<age::x25519::Recipient>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading recipient file {}", path.display()))?;
    let recipients = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            age::x25519::Recipient::from_str(line)
                .map_err(|error| anyhow::anyhow!("{}: not an age public key: {error}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!recipients.is_empty(), "{} holds no public key", path.display());
    Ok(recipients)
}

/// The identity in a private-key file. The error never quotes the file's contents.
pub fn read_identity(path: &Path) -> anyhow::Result<age::x25519::Identity> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading key file {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|line| line.starts_with("AGE-SECRET-KEY-"))
        .and_then(|line| age::x25519::Identity::from_str(line).ok())
        .with_context(|| format!("{} holds no age private key (AGE-SECRET-KEY-...)", path.display()))
}
