//! TLS client configuration for each sslmode, and the channel-binding data for SCRAM-PLUS.
//!
//! sslmode semantics from `libpq-ssl` in the PostgreSQL documentation: `require` without a root
//! certificate checks nothing, with one it behaves as `verify-ca`; `verify-ca` checks the chain;
//! `verify-full` also checks the host name. Channel binding (`tls-server-end-point`, RFC 5929) as
//! in `src/interfaces/libpq/fe-secure-openssl.c` `pgtls_get_peer_certificate_hash`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;

use crate::config::{Config, RootCert, SslMode};
use crate::error::{Error, Result};

/// ALPN protocol PostgreSQL 17+ requires for direct TLS and checks whenever it is offered.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_roots(root: &RootCert) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                Error::Tls(format!(
                    "could not read root certificate file \"{}\": {e}",
                    path.display()
                ))
            })?;
            for c in certs {
                let c = c.map_err(|e| {
                    Error::Tls(format!(
                        "could not read root certificate file \"{}\": {e}",
                        path.display()
                    ))
                })?;
                store.add(c).map_err(|e| {
                    Error::Tls(format!("bad certificate in \"{}\": {e}", path.display()))
                })?;
            }
            if store.is_empty() {
                return Err(Error::Tls(format!(
                    "root certificate file \"{}\" holds no certificates",
                    path.display()
                )));
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = store.add(c);
            }
            if store.is_empty() {
                return Err(Error::Tls(
                    "sslrootcert=system, but no system root certificates were found".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// Accepts any certificate (sslmode require/prefer/allow without a root certificate), but still
/// checks that the server owns the key it presents.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct VerifyChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for VerifyChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Builds the rustls client configuration for `config`'s sslmode, root and client certificates.
pub fn client_config(config: &Config) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let effective = match (config.sslmode, &config.sslrootcert) {
        // libpq: require with a root certificate file present behaves as verify-ca.
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (m, _) => m,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match effective {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let root = config.sslrootcert.as_ref().ok_or_else(|| {
                Error::Tls(format!(
                    "sslmode {} needs a root certificate: set sslrootcert (a file, or \"system\") or create ~/.postgresql/root.crt",
                    if effective == SslMode::VerifyFull { "verify-full" } else { "verify-ca" }
                ))
            })?;
            let roots = Arc::new(load_roots(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| Error::Tls(format!("cannot build certificate verifier: {e}")))?;
            if effective == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(VerifyChainOnly(webpki))
            }
        }
        _ => Arc::new(AcceptAnyCert(provider.clone())),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match (&config.sslcert, &config.sslkey) {
        (Some(cert), Some(key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::Tls(format!(
                        "could not read certificate file \"{}\": {e}",
                        cert.display()
                    ))
                })?;
            check_key_permissions(key)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                Error::Tls(format!(
                    "could not load private key file \"{}\": {e}",
                    key.display()
                ))
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| Error::Tls(format!("client certificate: {e}")))?
        }
        (Some(cert), None) => {
            return Err(Error::Tls(format!(
                "certificate present, but not private key file (sslcert \"{}\" without sslkey)",
                cert.display()
            )))
        }
        _ => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(tls)
}

fn check_key_permissions(key: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(key).map_err(|e| {
        Error::Tls(format!(
            "could not access private key file \"{}\": {e}",
            key.display()
        ))
    })?;
    // libpq: u=rw (0600) or less if owned by the user; u=rw,g=r (0640) if owned by root.
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o037 != 0 {
        return Err(Error::Tls(format!(
            "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less",
            key.display()
        )));
    }
    Ok(())
}

/// The server name to verify and send as SNI: IP addresses are checked as such and get no SNI.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| Error::Tls(format!("invalid server name \"{host}\" for TLS: {e}")))
}

/// The `tls-server-end-point` channel-binding data: the server certificate hashed with its
/// signature algorithm's hash, with MD5 and SHA-1 replaced by SHA-256 (RFC 5929 section 4.1).
pub(crate) fn server_end_point_hash(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    let oid = signature_algorithm_oid(cert_der).ok_or("cannot parse the server certificate")?;
    // Object identifiers, DER content bytes.
    const RSA: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    enum H {
        S224,
        S256,
        S384,
        S512,
    }
    let h = if oid.len() == 9 && oid[..8] == RSA {
        match oid[8] {
            4 | 5 | 11 => H::S256, // md5, sha1 -> sha256; sha256
            12 => H::S384,
            13 => H::S512,
            14 => H::S224,
            _ => return Err("unsupported RSA signature algorithm in server certificate".into()),
        }
    } else if oid.len() == 8 && oid[..7] == ECDSA_SHA2 {
        match oid[7] {
            1 => H::S224,
            2 => H::S256,
            3 => H::S384,
            4 => H::S512,
            _ => return Err("unsupported ECDSA signature algorithm in server certificate".into()),
        }
    } else if oid[..] == ECDSA_SHA1 {
        H::S256
    } else {
        return Err(
            "the server certificate's signature algorithm has no hash usable for channel binding"
                .into(),
        );
    };
    Ok(match h {
        H::S224 => sha2::Sha224::digest(cert_der).to_vec(),
        H::S256 => sha2::Sha256::digest(cert_der).to_vec(),
        H::S384 => sha2::Sha384::digest(cert_der).to_vec(),
        H::S512 => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

/// Reads a DER TLV header: (tag, content, rest).
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, hdr) = if first & 0x80 == 0 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    if end > b.len() {
        return None;
    }
    Some((tag, &b[hdr..end], &b[end..]))
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, ... }
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = der_tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _tbs, rest) = der_tlv(body)?;
    let (tag, alg, _) = der_tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_tlv(alg)?;
    (tag == 0x06).then_some(oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walker_rejects_garbage() {
        assert!(server_end_point_hash(b"").is_err());
        assert!(server_end_point_hash(&[0x30, 0x82, 0xff, 0xff]).is_err());
        assert!(server_end_point_hash(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_err());
    }

    #[test]
    fn ecdsa_sha256_certificate() {
        // SEQUENCE { SEQUENCE {}, SEQUENCE { OID 1.2.840.10045.4.3.2 }, BIT STRING {} }
        let cert = [
            0x30, 0x0e, 0x30, 0x00, 0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04,
            0x03, 0x02, 0x03, 0x00,
        ];
        let h = server_end_point_hash(&cert[..16]).unwrap();
        assert_eq!(h, sha2::Sha256::digest(&cert[..16]).to_vec());
    }
}
