//! A cluster's PKI: one CA, the serving and client certificates the control
//! plane and kubelet need, the service-account key pair, and kubeconfigs.
//!
//! The result is an `etc/` tree that stage 1 copies into the node's `/etc`
//! (it travels as the configuration initrd, never inside the signed rootfs).

use std::net::IpAddr;
use std::path::Path;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{io, ImageError, Result};

fn pki_err(what: &str) -> impl Fn(rcgen::Error) -> ImageError + '_ {
    move |e| ImageError::Pki(format!("{what}: {e}"))
}

/// A certificate and its key, PEM.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

/// The whole cluster PKI.
pub struct ClusterPki {
    pub ca: Pair,
    pub apiserver: Pair,
    pub apiserver_kubelet_client: Pair,
    pub controller_manager: Pair,
    pub scheduler: Pair,
    pub kubelet: Pair,
    pub admin: Pair,
    pub agent: Pair,
    pub sa_private: String,
    pub sa_public: String,
}

/// What the certificates must name.
pub struct PkiSpec<'a> {
    pub node_name: &'a str,
    /// Extra DNS names / IPs for the API server certificate.
    pub api_sans: &'a [String],
}

fn validity(p: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(365 * 5);
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    org: Option<&str>,
    sans: &[String],
    eku: ExtendedKeyUsagePurpose,
) -> Result<Pair> {
    let key = KeyPair::generate().map_err(pki_err(cn))?;
    let mut p = CertificateParams::default();
    validity(&mut p);
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(o) = org {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    for s in sans {
        p.subject_alt_names.push(match s.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(s.clone().try_into().map_err(pki_err(s))?),
        });
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![eku];
    let cert = p.signed_by(&key, issuer).map_err(pki_err(cn))?;
    Ok(Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Generate a fresh cluster PKI.
pub fn generate(spec: &PkiSpec) -> Result<ClusterPki> {
    let ca_key = KeyPair::generate().map_err(pki_err("CA key"))?;
    let mut cap = CertificateParams::default();
    validity(&mut cap);
    cap.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365 * 10);
    cap.distinguished_name
        .push(DnType::CommonName, "cairn-cluster-ca");
    cap.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    cap.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = cap.self_signed(&ca_key).map_err(pki_err("CA"))?;
    let ca = Pair {
        cert: ca_cert.pem(),
        key: ca_key.serialize_pem(),
    };
    let issuer = Issuer::new(cap, ca_key);

    let mut sans: Vec<String> = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        "10.96.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sans.push(spec.node_name.to_string());
    sans.extend(spec.api_sans.iter().cloned());
    sans.dedup();
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let client = |cn: &str, org: Option<&str>| leaf(&issuer, cn, org, &[], ClientAuth);
    let sa = KeyPair::generate().map_err(pki_err("service-account key"))?;
    Ok(ClusterPki {
        apiserver: leaf(&issuer, "kube-apiserver", None, &sans, ServerAuth)?,
        apiserver_kubelet_client: client("kube-apiserver-kubelet-client", Some("system:masters"))?,
        controller_manager: client("system:kube-controller-manager", None)?,
        scheduler: client("system:kube-scheduler", None)?,
        kubelet: client(
            &format!("system:node:{}", spec.node_name),
            Some("system:nodes"),
        )?,
        admin: client("cairn-admin", Some("system:masters"))?,
        agent: client(
            &format!("cairn-agent:{}", spec.node_name),
            Some("system:masters"),
        )?,
        sa_private: sa.serialize_pem(),
        sa_public: sa.public_key_pem(),
        ca,
    })
}

/// A kubeconfig with everything embedded.
pub fn kubeconfig(server: &str, ca_pem: &str, client: &Pair, user: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: cairn\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: cairn\n  context:\n    cluster: cairn\n    user: {user}\ncurrent-context: cairn\n",
        b64(ca_pem),
        b64(&client.cert),
        b64(&client.key)
    )
}

/// Write the node-side `etc/` tree under `root` (`root/etc/kubernetes/...`).
pub fn write_node_tree(pki: &ClusterPki, root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let local = "https://127.0.0.1:6443";
    let files: Vec<(&str, String, u32)> = vec![
        ("etc/kubernetes/pki/ca.crt", pki.ca.cert.clone(), 0o644),
        ("etc/kubernetes/pki/ca.key", pki.ca.key.clone(), 0o600),
        (
            "etc/kubernetes/pki/apiserver.crt",
            pki.apiserver.cert.clone(),
            0o644,
        ),
        (
            "etc/kubernetes/pki/apiserver.key",
            pki.apiserver.key.clone(),
            0o600,
        ),
        (
            "etc/kubernetes/pki/apiserver-kubelet-client.crt",
            pki.apiserver_kubelet_client.cert.clone(),
            0o644,
        ),
        (
            "etc/kubernetes/pki/apiserver-kubelet-client.key",
            pki.apiserver_kubelet_client.key.clone(),
            0o600,
        ),
        ("etc/kubernetes/pki/sa.key", pki.sa_private.clone(), 0o600),
        ("etc/kubernetes/pki/sa.pub", pki.sa_public.clone(), 0o644),
        (
            "etc/kubernetes/controller-manager.kubeconfig",
            kubeconfig(
                local,
                &pki.ca.cert,
                &pki.controller_manager,
                "controller-manager",
            ),
            0o600,
        ),
        (
            "etc/kubernetes/scheduler.kubeconfig",
            kubeconfig(local, &pki.ca.cert, &pki.scheduler, "scheduler"),
            0o600,
        ),
        (
            "etc/kubernetes/kubelet.kubeconfig",
            kubeconfig(local, &pki.ca.cert, &pki.kubelet, "kubelet"),
            0o600,
        ),
        (
            "etc/cairn/agent.kubeconfig",
            kubeconfig(local, &pki.ca.cert, &pki.agent, "cairn-agent"),
            0o600,
        ),
    ];
    for (rel, content, mode) in files {
        let p = root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        std::fs::write(&p, content).map_err(io(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io(&p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_tree_with_keys_private_and_sans_present() {
        let pki = generate(&PkiSpec {
            node_name: "node1",
            api_sans: &["10.0.2.15".into()],
        })
        .unwrap();
        assert!(pki.ca.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.sa_public.contains("PUBLIC KEY"));
        let d = tempfile::tempdir().unwrap();
        write_node_tree(&pki, d.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("etc/kubernetes/pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let kc =
            std::fs::read_to_string(d.path().join("etc/kubernetes/kubelet.kubeconfig")).unwrap();
        assert!(kc.contains("server: https://127.0.0.1:6443"));
        let parsed: serde_yaml::Value = serde_yaml::from_str(&kc).unwrap();
        assert_eq!(parsed["users"][0]["name"], "kubelet");
    }
}
