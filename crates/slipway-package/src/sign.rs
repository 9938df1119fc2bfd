//! Minisign signatures: key generation, signing and verification against a set of
//! trusted public keys.
//!
//! Files are in minisign's own formats, so the real `minisign` CLI verifies what Slipway
//! signs and Slipway verifies what `minisign` signs. Signing uses the `minisign` crate;
//! verification uses the smaller `minisign-verify` crate, and only accepts pre-hashed
//! signatures (minisign's default since 0.8): legacy signatures would force reading the
//! whole file into memory and are refused with a request to re-sign.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Largest signature or key file read; real ones are a few hundred bytes, so anything
/// bigger is not one and is refused before it is read into memory.
const MAX_SMALL_FILE: u64 = 64 * 1024;

/// A trusted minisign public key.
#[derive(Clone, Debug)]
pub struct PublicKey {
    key_id: String,
    base64: String,
    inner: minisign_verify::PublicKey,
}

impl PublicKey {
    /// Reads a public key file (`minisign.pub` format: an untrusted comment line and a
    /// base64 line), or a file holding only the base64 line.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_small(path, "public key")?;
        Self::parse(&text).map_err(|reason| Error::Key {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses a public key from the text of a `.pub` file or from its base64 line alone
    /// (as `minisign -P` takes it).
    pub fn parse(text: &str) -> Result<Self, String> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| "it holds no public key line".to_owned())?;
        let inner = minisign_verify::PublicKey::from_base64(line).map_err(|e| {
            format!("'{line}' is not a minisign Ed25519 public key ({e}); expected the base64 line of a minisign .pub file")
        })?;
        let parsed = minisign::PublicKey::from_base64(line)
            .map_err(|e| format!("'{line}' is not a minisign public key ({e})"))?;
        Ok(PublicKey {
            key_id: key_id_of(parsed.keynum()),
            base64: line.to_owned(),
            inner,
        })
    }

    /// The key id as minisign prints it (16 upper-case hex digits).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The base64 line of the key, as `minisign -P` accepts it.
    pub fn base64(&self) -> &str {
        &self.base64
    }

    /// The key in minisign's `.pub` file format.
    pub fn to_minisign_file(&self) -> String {
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.key_id, self.base64
        )
    }
}

/// A secret key, decrypted and ready to sign.
pub struct SecretKey {
    key_id: String,
    inner: minisign::SecretKey,
    public: minisign::PublicKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, even in debug output.
        f.debug_struct("SecretKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// Reads a minisign secret key file. `password` is required for password-protected
    /// keys and must be `None` for unencrypted ones (`minisign -G -W`).
    pub fn from_file(path: &Path, password: Option<&str>) -> Result<Self> {
        let text = read_small(path, "secret key")?;
        let key_error = |reason: String| Error::Key {
            path: path.to_owned(),
            reason,
        };
        let boxed = minisign::SecretKeyBox::from_string(&text)
            .map_err(|e| key_error(format!("it is not a minisign secret key ({e})")))?;
        let inner = match password {
            Some(password) => minisign::SecretKey::from_box(boxed, Some(password.to_owned()))
                .map_err(|e| {
                    key_error(format!(
                        "cannot decrypt it ({e}); check the password and that this is a minisign secret key"
                    ))
                })?,
            // `from_box` with no password would prompt on the terminal; automation must
            // never block on a prompt, so an encrypted key without password is an error.
            None => unencrypted_secret_key(&text, boxed).map_err(key_error)?,
        };
        let public = minisign::PublicKey::from_secret_key(&inner)
            .map_err(|e| key_error(format!("cannot derive its public key ({e})")))?;
        Ok(SecretKey {
            key_id: key_id_of(inner.keynum()),
            inner,
            public,
        })
    }

    /// The key id as minisign prints it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let base64 = self.public.to_base64();
        PublicKey {
            key_id: self.key_id.clone(),
            // The public key was derived from a valid secret key and re-encoded by the
            // same library, so it always parses.
            inner: minisign_verify::PublicKey::from_base64(&base64)
                .unwrap_or_else(|_| unreachable!("minisign encodes valid public keys")),
            base64,
        }
    }
}

/// Reads an unencrypted secret key. minisign 0.11's `-G -W` leaves the key checksum
/// zeroed, which the `minisign` crate rejects as corrupted; such keys are read without the
/// checksum and checked by signing a probe with the derived public key instead.
fn unencrypted_secret_key(
    text: &str,
    boxed: minisign::SecretKeyBox,
) -> Result<minisign::SecretKey, String> {
    use ct_codecs::{Base64, Decoder};
    let line = text.lines().nth(1).unwrap_or_default().trim();
    let bytes = Base64::decode_to_vec(line, None)
        .map_err(|_| "it is not a minisign secret key (its key line is not base64)".to_owned())?;
    // Layout: sig_alg(2) kdf_alg(2) chk_alg(2) salt(32) ops(8) mem(8) keynum(8) sk(64) chk(32).
    if bytes.len() != 158 {
        return Err(format!(
            "it is not a minisign secret key ({} bytes instead of 158)",
            bytes.len()
        ));
    }
    if bytes[2..4] != [0, 0] {
        return Err("it is password-protected; pass its password".to_owned());
    }
    match minisign::SecretKey::from_unencrypted_box(boxed) {
        Ok(sk) => Ok(sk),
        Err(_) if bytes[126..].iter().all(|&b| b == 0) => {
            let sk = minisign::SecretKey::from_bytes(&bytes)
                .map_err(|e| format!("it is not a minisign secret key ({e})"))?;
            let pk = minisign::PublicKey::from_secret_key(&sk)
                .map_err(|e| format!("it is corrupted ({e})"))?;
            minisign::sign(Some(&pk), &sk, &b"probe"[..], None, None)
                .map_err(|e| format!("it is corrupted: its halves do not match ({e})"))?;
            Ok(sk)
        }
        Err(e) => Err(format!(
            "it is corrupted ({e}): its checksum does not match"
        )),
    }
}

/// The files written by [`generate_keypair`].
#[derive(Clone, Debug)]
pub struct GeneratedKey {
    pub key_id: String,
    pub secret_key: PathBuf,
    pub public_key: PathBuf,
    pub encrypted: bool,
}

/// Generates an Ed25519 key pair and writes it in minisign's formats. With a password the
/// secret key is scrypt-encrypted as `minisign -G` does; without, it is unencrypted as
/// `minisign -G -W` does, for automation. Existing files are never overwritten.
pub fn generate_keypair(
    secret_key: &Path,
    public_key: &Path,
    password: Option<&str>,
) -> Result<GeneratedKey> {
    for path in [secret_key, public_key] {
        if path.exists() {
            return Err(Error::KeyExists {
                path: path.to_owned(),
            });
        }
    }
    let generate_error = |e: minisign::PError| Error::Key {
        path: secret_key.to_owned(),
        reason: format!("cannot generate a key pair ({e})"),
    };
    let pair = match password {
        Some(password) => minisign::KeyPair::generate_encrypted_keypair(Some(password.to_owned()))
            .map_err(generate_error)?,
        None => minisign::KeyPair::generate_unencrypted_keypair().map_err(generate_error)?,
    };
    let key_id = key_id_of(pair.pk.keynum());
    let comment = if password.is_some() {
        "minisign encrypted secret key"
    } else {
        "minisign unencrypted secret key"
    };
    let sk_text = pair.sk.to_box(Some(comment)).map_err(generate_error)?;
    let pk_text = format!(
        "untrusted comment: minisign public key {key_id}\n{}\n",
        pair.pk.to_base64()
    );
    write_new(secret_key, sk_text.into_string().as_bytes(), 0o600)?;
    write_new(public_key, pk_text.as_bytes(), 0o644)?;
    Ok(GeneratedKey {
        key_id,
        secret_key: secret_key.to_owned(),
        public_key: public_key.to_owned(),
        encrypted: password.is_some(),
    })
}

/// The trusted comment minisign itself writes by default; callers pass the time so this
/// crate never reads the clock.
pub fn default_trusted_comment(file: &Path, unix_time: u64) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("timestamp:{unix_time}\tfile:{name}\thashed")
}

/// The conventional signature path: the file name with `.minisig` appended.
pub fn signature_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

/// Signs `file` and writes the signature next to it as `FILE.minisig`; returns its path.
pub fn sign(file: &Path, secret_key: &SecretKey, trusted_comment: &str) -> Result<PathBuf> {
    let out = signature_path(file);
    sign_to(file, secret_key, trusted_comment, &out)?;
    Ok(out)
}

/// Signs `file` and writes the signature to `out`.
pub fn sign_to(
    file: &Path,
    secret_key: &SecretKey,
    trusted_comment: &str,
    out: &Path,
) -> Result<()> {
    let reader = crate::fsread::open_regular(file)?.0;
    let text = sign_reader(reader, file, secret_key, trusted_comment)?;
    write_replace(out, text.as_bytes())
}

/// Signs an in-memory document (the release manifest, an audit checkpoint), returning the
/// signature text; `origin` names the document in errors.
pub fn sign_bytes(
    data: &[u8],
    origin: &Path,
    secret_key: &SecretKey,
    trusted_comment: &str,
) -> Result<String> {
    sign_reader(data, origin, secret_key, trusted_comment)
}

fn sign_reader(
    reader: impl Read,
    origin: &Path,
    secret_key: &SecretKey,
    trusted_comment: &str,
) -> Result<String> {
    // The signature format is line based: a newline would end the trusted comment early
    // and the signature would not verify anywhere.
    if trusted_comment.contains(['\n', '\r']) {
        return Err(Error::Sign {
            path: origin.to_owned(),
            reason: "the trusted comment contains a line break; use a single line".to_owned(),
        });
    }
    let untrusted = format!("signature from minisign secret key {}", secret_key.key_id);
    let signature = minisign::sign(
        Some(&secret_key.public),
        &secret_key.inner,
        reader,
        Some(trusted_comment),
        Some(&untrusted),
    )
    .map_err(|e| Error::Sign {
        path: origin.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(signature.into_string())
}

/// What a successful verification proves: which trusted key signed, and the trusted
/// comment that key signed along with the file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    pub key_id: String,
    pub trusted_comment: String,
}

/// Verifies that `signature` is a valid minisign signature of `file` by one of
/// `trusted_public_keys`.
pub fn verify(
    file: &Path,
    signature: &Path,
    trusted_public_keys: &[PublicKey],
) -> Result<Verified> {
    let sig_text = read_signature_text(signature)?;
    let mut reader = crate::fsread::open_regular(file)?.0;
    verify_reader(&mut reader, file, &sig_text, signature, trusted_public_keys)
}

/// Verifies an in-memory document against signature text; `origin` and `signature` name
/// the document and where the signature came from in errors.
pub fn verify_bytes(
    data: &[u8],
    origin: &Path,
    sig_text: &str,
    signature: &Path,
    trusted_public_keys: &[PublicKey],
) -> Result<Verified> {
    let mut reader = data;
    verify_reader(
        &mut reader,
        origin,
        sig_text,
        signature,
        trusted_public_keys,
    )
}

pub(crate) fn read_signature(path: &Path) -> Result<String> {
    read_signature_text(path)
}

fn verify_reader(
    reader: &mut dyn Read,
    file: &Path,
    sig_text: &str,
    signature: &Path,
    trusted_public_keys: &[PublicKey],
) -> Result<Verified> {
    let format_error = |reason: String| Error::SignatureFormat {
        path: signature.to_owned(),
        reason,
    };
    let (sig, key_id) = parse_signature(sig_text).map_err(format_error)?;
    let candidates: Vec<&PublicKey> = trusted_public_keys
        .iter()
        .filter(|k| k.key_id == key_id)
        .collect();
    if candidates.is_empty() {
        let mut trusted: Vec<&str> = trusted_public_keys.iter().map(|k| k.key_id()).collect();
        trusted.sort_unstable();
        trusted.dedup();
        return Err(Error::UntrustedKey {
            file: file.to_owned(),
            signature: signature.to_owned(),
            key_id,
            trusted: if trusted.is_empty() {
                "none configured".to_owned()
            } else {
                trusted.join(", ")
            },
        });
    }
    // Hash the content once, then check it against every trusted key with this id (two
    // distinct keys sharing an id is unlikely but must not make verification fail).
    let mut verifiers = Vec::with_capacity(candidates.len());
    for key in &candidates {
        verifiers.push(key.inner.verify_stream(&sig).map_err(|e| {
            format_error(format!(
                "it is a legacy (non pre-hashed) signature, which is not accepted ({e}); re-sign with a current minisign"
            ))
        })?);
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::io("read", file, e))?;
        if n == 0 {
            break;
        }
        for v in &mut verifiers {
            v.update(&buf[..n]);
        }
    }
    if verifiers.iter_mut().any(|v| v.finalize().is_ok()) {
        return Ok(Verified {
            key_id,
            trusted_comment: sig.trusted_comment().to_owned(),
        });
    }
    Err(Error::BadSignature {
        file: file.to_owned(),
        signature: signature.to_owned(),
        key_id,
    })
}

/// Parses a signature and extracts the key id it names, with a reason that says what is
/// wrong when the text is not a signature.
fn parse_signature(text: &str) -> Result<(minisign_verify::Signature, String), String> {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() < 4 {
        return Err(format!(
            "it has {} line(s), so it is truncated or not a signature",
            lines.len()
        ));
    }
    if !lines[0].starts_with("untrusted comment:") {
        return Err("its first line is not an 'untrusted comment:' line".to_owned());
    }
    if !lines[2].starts_with("trusted comment: ") {
        return Err("its third line is not a 'trusted comment: ' line".to_owned());
    }
    let sig = minisign_verify::Signature::decode(text).map_err(|e| match e {
        minisign_verify::Error::UnsupportedAlgorithm => {
            "it uses an unsupported signature algorithm (expected Ed25519)".to_owned()
        }
        other => format!("its signature lines are garbled or truncated ({other})"),
    })?;
    let boxed = minisign::SignatureBox::from_string(text)
        .map_err(|e| format!("its signature lines are garbled ({e})"))?;
    Ok((sig, key_id_of(boxed.keynum())))
}

/// Formats a key number the way minisign prints key ids: little-endian u64, upper hex.
fn key_id_of(keynum: &[u8]) -> String {
    let mut bytes = [0u8; 8];
    let n = keynum.len().min(8);
    bytes[..n].copy_from_slice(&keynum[..n]);
    format!("{:016X}", u64::from_le_bytes(bytes))
}

/// Reads a key file as text. Only its base64 line matters and that is ASCII; the comment
/// lines may hold any bytes (minisign writes and accepts them unchecked), so they are read
/// lossily rather than refusing a good key over its comment.
fn read_small(path: &Path, what: &'static str) -> Result<String> {
    let bytes = read_small_bytes(path, what)?;
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Reads a signature file as text. The untrusted comment (first line) is signed by
/// nothing and minisign accepts any bytes there, so it is read lossily. The trusted
/// comment is signed as bytes: replacing an invalid byte would make a genuine signature
/// look like tampering, so a trusted comment that is not UTF-8 is a format error that says
/// so.
///
/// minisign drops every carriage return that ends a line; `str::lines` drops only one, so
/// the lines are trimmed the same way here. Otherwise a signature file that went through a
/// Windows editor twice ("\r\r\n") verified with minisign and failed here, as garbled base64
/// or, on the trusted comment, as tampering.
fn read_signature_text(path: &Path) -> Result<String> {
    let text = read_signature_utf8(path)?;
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    if lines.is_empty() {
        return Ok(String::new());
    }
    Ok(lines.join("\n") + "\n")
}

fn read_signature_utf8(path: &Path) -> Result<String> {
    let bytes = read_small_bytes(path, "signature")?;
    String::from_utf8(bytes).or_else(|e| {
        let bytes = e.into_bytes();
        let split = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        let (comment, rest) = bytes.split_at(split);
        match std::str::from_utf8(rest) {
            Ok(rest) => Ok(format!("{}{rest}", String::from_utf8_lossy(comment))),
            Err(_) => Err(Error::SignatureFormat {
                path: path.to_owned(),
                reason: "its trusted comment or signature lines are not UTF-8 text; Slipway \
                         checks only UTF-8 trusted comments (minisign -t)"
                    .to_owned(),
            }),
        }
    })
}

fn read_small_bytes(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    let file = crate::fsread::open_regular(path)?.0;
    let mut bytes = Vec::new();
    file.take(MAX_SMALL_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > MAX_SMALL_FILE {
        let reason =
            format!("it is larger than {MAX_SMALL_FILE} bytes, so it is not a minisign {what}");
        return Err(if what == "signature" {
            Error::SignatureFormat {
                path: path.to_owned(),
                reason,
            }
        } else {
            Error::Key {
                path: path.to_owned(),
                reason,
            }
        });
    }
    Ok(bytes)
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::KeyExists {
                path: path.to_owned(),
            }
        } else {
            Error::io("create", path, e)
        }
    })?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write", path, e))
}

/// Writes via a temporary file and a rename so a reader never sees half a signature.
pub(crate) fn write_replace(path: &Path, data: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io("create a temporary file in", dir, e))?;
    tmp.write_all(data)
        .map_err(|e| Error::io("write", tmp.path().to_owned(), e))?;
    set_public_mode(tmp.as_file(), path)?;
    tmp.persist(path)
        .map_err(|e| Error::io("write", path, e.error))?;
    Ok(())
}

/// Temporary files are created 0600; published files (signatures, archives) are meant to
/// be read by others, so they get the usual 0644.
pub(crate) fn set_public_mode(file: &File, path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io("set permissions of", path, e))?;
    }
    #[cfg(not(unix))]
    let _ = (file, path);
    Ok(())
}
