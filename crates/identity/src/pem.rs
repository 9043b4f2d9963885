//! PEM encoding and decoding of certificates (decoding via `rustls-pki-types`, encoding here:
//! a few lines of base64 are cheaper than another dependency).

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::Error;

/// Encodes one DER object as a PEM block with the given label, lines of 64 characters.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Encodes certificates as concatenated `CERTIFICATE` blocks.
pub(crate) fn encode_certs<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    certs
        .into_iter()
        .map(|c| encode("CERTIFICATE", c.as_ref()))
        .collect()
}

/// Decodes every `CERTIFICATE` block of `pem` (other blocks are skipped); `what` names the input
/// in errors. Fails on malformed PEM and when there is no certificate at all.
pub(crate) fn decode_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificates { what });
    }
    Ok(certs)
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input), want);
        }
    }

    #[test]
    fn encoded_blocks_decode_back() {
        let payloads: Vec<Vec<u8>> =
            vec![vec![0x30, 0x03, 1, 2, 3], (0..=255).collect(), vec![7; 100]];
        let certs: Vec<CertificateDer<'static>> = payloads
            .iter()
            .map(|p| CertificateDer::from(p.clone()))
            .collect();
        let pem = encode_certs(&certs);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let back = decode_certs(&pem, "test").unwrap();
        assert_eq!(back, certs);
    }

    #[test]
    fn no_certificate_is_an_error() {
        assert!(matches!(
            decode_certs("hello", "bundle"),
            Err(Error::NoCertificates { what: "bundle" })
        ));
    }
}
