//! TLS for `tls` and `wss` listeners: PEM certificate chain and key, optional client CA (mTLS).

use crate::config::ListenerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listener {listener}: cannot read {what} from {path}: {message}")]
    Pem {
        listener: String,
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("listener {listener}: invalid TLS setup: {message}")]
    Setup { listener: String, message: String },
}

pub fn load_tls_config(cfg: &ListenerConfig) -> Result<TlsAcceptor, TlsError> {
    let listener = format!("{}:{}", cfg.kind.as_str(), cfg.bind);
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Err(TlsError::Setup {
            listener,
            message: "`cert` and `key` are required".into(),
        });
    };
    tls_acceptor(&listener, cert, key, cfg.client_ca.as_deref())
}

/// A TLS acceptor for `listener` (named in errors) from PEM files; with `client_ca`, clients
/// must present a certificate it signed.
pub fn tls_acceptor(
    listener: &str,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TlsError> {
    let setup = |message: String| TlsError::Setup {
        listener: listener.to_string(),
        message,
    };
    let certs = read_certs(listener, "certificate chain", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        listener: listener.to_string(),
        what: "private key",
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(listener, "client CA", ca)? {
                roots.add(c).map_err(|e| setup(format!("client CA: {e}")))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| setup(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| setup(format!("certificate and key do not match: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certs(
    listener: &str,
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Pem {
        listener: listener.to_string(),
        what,
        path: path.to_path_buf(),
        message,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate found".into()));
    }
    Ok(certs)
}

/// The subject common name of a verified client certificate, for hooks.
pub(crate) fn peer_common_name<S>(stream: &TlsStream<S>) -> Option<Arc<str>> {
    let cert = stream.get_ref().1.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    Some(Arc::from(cn))
}
