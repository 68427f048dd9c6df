//! API keys and who a request speaks for. Keys are 256 random bits, shown
//! once and stored as their sha256 (a key that long needs no slow hash).
//! `Authorization: Bearer KEY` names the caller; an operator key may act for
//! any tenant through `X-Tenant-ID`; a tenant key's `X-Tenant-ID`, if sent,
//! must be its own. With `--trust-tenant-header` (behind a gateway that
//! authenticates), `X-Tenant-ID` alone names the tenant.

use base64::Engine as _;
use connectrpc::ConnectError;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::store::{KeyOwner, Store, Tenant};

pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the kernel's random source works");
    format!(
        "bd_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn hash(key: &str) -> String {
    builderd_oci::Digest::of_hasher(Sha256::new_with_prefix(key.as_bytes()))
        .hex()
        .to_string()
}

/// A tenant name: what `X-Tenant-ID` carries and the artifact directory's name.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.')
}

/// The tenant a request acts for.
pub fn caller(
    store: &Store,
    headers: &HeaderMap,
    trust_tenant_header: bool,
) -> Result<Tenant, ConnectError> {
    let header_tenant = headers
        .get("x-tenant-id")
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| ConnectError::invalid_argument("X-Tenant-ID is not text"))
        })
        .transpose()?;
    let key = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let internal = |e: crate::store::StoreError| ConnectError::internal(e.to_string());
    let named = |id: &str| -> Result<Tenant, ConnectError> {
        store
            .tenant(id)
            .map_err(internal)?
            .ok_or_else(|| ConnectError::not_found(format!("no tenant {id:?}")))
    };
    let Some(key) = key else {
        return match header_tenant {
            Some(t) if trust_tenant_header => named(t),
            _ => Err(ConnectError::unauthenticated(
                "no API key: send Authorization: Bearer KEY (builderd tenant create prints one)",
            )),
        };
    };
    match store.key_owner(&hash(key)).map_err(internal)? {
        None => Err(ConnectError::unauthenticated("the API key is not valid")),
        Some(KeyOwner::Operator) => match header_tenant {
            Some(t) => named(t),
            None => Err(ConnectError::invalid_argument(
                "an operator key acts for a tenant: name it with X-Tenant-ID",
            )),
        },
        Some(KeyOwner::Tenant(tenant)) => match header_tenant {
            Some(t) if t != tenant.id => Err(ConnectError::permission_denied(format!(
                "this API key belongs to tenant {:?}, not {t:?}",
                tenant.id
            ))),
            _ => Ok(tenant),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::Tier;
    use connectrpc::ErrorCode;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn keys_tenants_and_the_operator() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let (a, b, op) = (new_key(), new_key(), new_key());
        assert_ne!(a, b);
        store.create_tenant("a", Tier::Free, &hash(&a)).unwrap();
        store.create_tenant("b", Tier::Pro, &hash(&b)).unwrap();
        store.set_operator_key(&hash(&op)).unwrap();
        let bearer = |k: &str| format!("Bearer {k}");
        let code = |r: Result<Tenant, ConnectError>| r.unwrap_err().code;

        assert_eq!(
            caller(&store, &headers(&[("authorization", &bearer(&a))]), false)
                .unwrap()
                .id,
            "a"
        );
        assert_eq!(
            code(caller(
                &store,
                &headers(&[("authorization", &bearer(&a)), ("x-tenant-id", "b")]),
                false
            )),
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            caller(
                &store,
                &headers(&[("authorization", &bearer(&op)), ("x-tenant-id", "b")]),
                false
            )
            .unwrap()
            .id,
            "b"
        );
        assert_eq!(
            code(caller(&store, &headers(&[]), false)),
            ErrorCode::Unauthenticated
        );
        assert_eq!(
            code(caller(
                &store,
                &headers(&[("authorization", "Bearer bd_wrong")]),
                false
            )),
            ErrorCode::Unauthenticated
        );
        assert_eq!(
            code(caller(&store, &headers(&[("x-tenant-id", "a")]), false)),
            ErrorCode::Unauthenticated
        );
        assert_eq!(
            caller(&store, &headers(&[("x-tenant-id", "a")]), true)
                .unwrap()
                .id,
            "a"
        );
        assert!(valid_tenant_id("team-1.prod") && !valid_tenant_id("../x") && !valid_tenant_id(""));
    }
}
