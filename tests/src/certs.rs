//! A throwaway certificate authority, server certificate and client certificates.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA made for one test run.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

fn write_private(path: &Path, data: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `path`.
    pub fn write_cert(&self, path: &Path) {
        std::fs::write(path, self.cert_pem()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Issues a certificate for `names` (DNS names or IP addresses) with common name `cn` and
    /// writes it and its key (0600) to the given paths.
    pub fn issue(&self, cn: &str, names: &[&str], cert_path: &Path, key_path: &Path) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("cert params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        std::fs::write(cert_path, cert.pem())
            .unwrap_or_else(|e| panic!("{}: {e}", cert_path.display()));
        write_private(key_path, &key.serialize_pem());
    }

    /// As [`TestCa::issue`] for one IP address, which the certificate names both as an IP
    /// address and as a DNS name: clients that match only DNS names (pgBackRest's S3 client)
    /// accept it too.
    pub fn issue_for_ip(&self, ip: std::net::IpAddr, cert_path: &Path, key_path: &Path) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("cert params");
        params
            .distinguished_name
            .push(DnType::CommonName, ip.to_string());
        params.subject_alt_names = vec![
            rcgen::SanType::IpAddress(ip),
            rcgen::SanType::DnsName(ip.to_string().try_into().expect("an IA5 string")),
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        std::fs::write(cert_path, cert.pem())
            .unwrap_or_else(|e| panic!("{}: {e}", cert_path.display()));
        write_private(key_path, &key.serialize_pem());
    }
}
