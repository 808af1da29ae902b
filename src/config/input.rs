//! Reading the files a config names — CA bundles, kubeconfigs, client
//! certificates and keys, bearer tokens — the one way both `mcprom check`
//! and the daemon read them.
//!
//! Only regular files are read (a FIFO would block the reader for good, a
//! device such as `/dev/zero` would never end), opened without blocking, and
//! only up to a size no such file reaches. Each is then parsed the way it is
//! used, so `check` fails exactly where `run` would: a CA file must hold a
//! PEM certificate, a token file one non-empty line (trailing newline and
//! spaces trimmed: `kubectl create token … > file` writes one).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Largest credential, CA or kubeconfig file read: a kubeconfig with a few
/// embedded certificates is tens of KB, a token a few KB.
pub const MAX_INPUT_BYTES: u64 = 1 << 20;

/// Largest config file read: 20,000 clusters take ~3 MB.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// A named file that cannot be used. `kind` is the OS error's, when the OS
/// refused (missing, permissions), for hints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    /// What the OS said, when it was the OS.
    pub kind: Option<std::io::ErrorKind>,
    /// What is wrong, without the path (callers name it).
    pub message: String,
}

impl InputError {
    fn invalid(message: impl Into<String>) -> Self {
        InputError {
            kind: None,
            message: message.into(),
        }
    }
}

impl From<InputError> for std::io::Error {
    fn from(error: InputError) -> Self {
        std::io::Error::new(
            error.kind.unwrap_or(std::io::ErrorKind::InvalidData),
            error.message,
        )
    }
}

impl From<std::io::Error> for InputError {
    fn from(error: std::io::Error) -> Self {
        InputError {
            kind: Some(error.kind()),
            message: error.to_string(),
        }
    }
}

/// The bytes of the regular file at `path`, at most `max` of them.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, InputError> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer. It changes nothing for a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    let what = if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(InputError::invalid(format!(
            "it is {what}, not a regular file"
        )));
    }
    let too_big = || {
        InputError::invalid(format!(
            "it is larger than {} KiB, more than such a file can be",
            max / 1024
        ))
    };
    if meta.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::take(file, max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    Ok(bytes)
}

/// A credential or CA file's bytes (regular file, at most [`MAX_INPUT_BYTES`]).
pub fn read(path: &Path) -> Result<Vec<u8>, InputError> {
    read_bounded(path, MAX_INPUT_BYTES)
}

/// A file's text (UTF-8).
pub fn read_text(path: &Path) -> Result<String, InputError> {
    String::from_utf8(read(path)?).map_err(|e| {
        InputError::invalid(format!(
            "it is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// A bearer token file: one line, trimmed, non-empty, printable ASCII with
/// no inner space. Never quotes the content.
pub fn read_token(path: &Path) -> Result<String, InputError> {
    let bytes = read(path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| InputError::invalid("it is not a token: it is not UTF-8 text"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(InputError::invalid(
            "it is empty: a token file holds one token",
        ));
    }
    if token.lines().count() > 1 {
        return Err(InputError::invalid(
            "it holds more than one line: a token file holds one token",
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InputError::invalid(
            "it is not a token: it contains spaces or control characters",
        ));
    }
    Ok(token.to_string())
}

/// A PEM file's certificates (at least one), DER-encoded.
pub fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, InputError> {
    parse_certificates(&read(path)?)
}

/// The certificates of a PEM bundle (at least one), DER-encoded.
pub fn parse_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, InputError> {
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| InputError::invalid(format!("it is not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(InputError::invalid(
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    for der in &certs {
        x509_parser::parse_x509_certificate(der).map_err(|e| {
            InputError::invalid(format!("it holds a certificate that does not parse: {e}"))
        })?;
    }
    Ok(certs)
}

/// A PEM private key file's bytes, checked to hold a key.
pub fn read_private_key(path: &Path) -> Result<Vec<u8>, InputError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        InputError::invalid("it holds no PEM private key (-----BEGIN … PRIVATE KEY-----)")
    })?;
    Ok(bytes)
}

/// A kubeconfig as written, with the file names in it made absolute against
/// its directory (as kubectl resolves them). See [`read_kubeconfig`] for
/// the form the daemon uses.
pub fn parse_kubeconfig(path: &Path) -> Result<kube::config::Kubeconfig, InputError> {
    let text = read_text(path)?;
    let mut kubeconfig = kube::config::Kubeconfig::from_yaml(&text)
        .map_err(|e| InputError::invalid(format!("it is not a kubeconfig: {}", one_line(&e))))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let absolute = |file: &mut Option<String>| {
        if let Some(name) = file.as_mut().filter(|n| !n.is_empty()) {
            *name = dir.join(&*name).to_string_lossy().into_owned();
        }
    };
    for cluster in kubeconfig
        .clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
    {
        absolute(&mut cluster.certificate_authority);
    }
    for auth in kubeconfig
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        absolute(&mut auth.client_certificate);
        absolute(&mut auth.client_key);
        absolute(&mut auth.token_file);
    }
    Ok(kubeconfig)
}

/// A kubeconfig with every file it names read the same careful way and
/// embedded (`certificate-authority` → `-data`, `client-certificate`/`-key`
/// → `-data`, `tokenFile` → `token`), so nothing behind it can block, grow
/// without bound, or differ between `check` and `run`.
pub fn read_kubeconfig(path: &Path) -> Result<kube::config::Kubeconfig, InputError> {
    use base64::Engine as _;
    let mut kubeconfig = parse_kubeconfig(path)?;
    let inner = |key: &str, file: &str, error: InputError| InputError {
        kind: error.kind,
        message: format!("{key} {file}: {}", error.message),
    };
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    for cluster in kubeconfig
        .clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
    {
        if let Some(file) = cluster.certificate_authority.take() {
            let pem = read(Path::new(&file))
                .and_then(|pem| parse_certificates(&pem).map(|_| pem))
                .map_err(|e| inner("certificate-authority", &file, e))?;
            cluster.certificate_authority_data = Some(b64(&pem));
        }
    }
    for auth in kubeconfig
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        if let Some(file) = auth.client_certificate.take() {
            let pem = read(Path::new(&file))
                .and_then(|pem| parse_certificates(&pem).map(|_| pem))
                .map_err(|e| inner("client-certificate", &file, e))?;
            auth.client_certificate_data = Some(b64(&pem));
        }
        if let Some(file) = auth.client_key.take() {
            let pem =
                read_private_key(Path::new(&file)).map_err(|e| inner("client-key", &file, e))?;
            auth.client_key_data = Some(b64(&pem).into());
        }
        if let Some(file) = auth.token_file.take() {
            let token = read_token(Path::new(&file)).map_err(|e| inner("tokenFile", &file, e))?;
            auth.token = Some(token.into());
        }
    }
    Ok(kubeconfig)
}

/// An error and its sources on one line.
fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let error = read(&fifo).unwrap_err();
        assert!(error.message.contains("FIFO"), "{error}");
        assert!(
            read(Path::new("/dev/zero"))
                .unwrap_err()
                .message
                .contains("device")
        );
        assert!(read(dir.path()).unwrap_err().message.contains("directory"));
    }

    #[test]
    fn a_token_file_is_trimmed_and_must_be_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "abc.def.ghi\n").unwrap();
        assert_eq!(read_token(&file).unwrap(), "abc.def.ghi");
        for bad in ["", " \n", "a\nb\n", "a b"] {
            std::fs::write(&file, bad).unwrap();
            let error = read_token(&file).unwrap_err();
            assert!(!error.message.contains("a b"), "{error}");
        }
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        std::fs::write(&file, vec![b'a'; MAX_INPUT_BYTES as usize + 1]).unwrap();
        assert!(read(&file).unwrap_err().message.contains("larger than"));
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, "").unwrap();
        assert!(
            read_certificates(&file)
                .unwrap_err()
                .message
                .contains("no PEM")
        );
        std::fs::write(&file, "hello").unwrap();
        assert!(read_certificates(&file).is_err());
    }
}
