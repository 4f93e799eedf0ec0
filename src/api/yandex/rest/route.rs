//! The REST bindings of the contract (`google.api.http` of every method we serve), parsed by
//! hand: the custom verb is a colon suffix on the last path segment
//! (`/kms/v1/asymmetricSignatureKeys/{key_id}:signHash`), which routers treat specially.
//!
//! Path values are percent-decoded after the path is split, so an id may contain any character
//! (`%2F` is a `/` inside the id, `%3A` a `:`); a literal `:` in the last segment always starts
//! the verb. Ids are then checked by the shared validation like any other field; the path is
//! never used for anything but the lookup.

use crate::error::Error;
use http::Method;
use percent_encoding::percent_decode_str;

/// The collection of asymmetric signature keys.
pub const KEYS: &str = "/kms/v1/asymmetricSignatureKeys";

/// A matched binding, with its decoded path value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /kms/v1/asymmetricSignatureKeys/{key_id}:sign`
    Sign(String),
    /// `POST /kms/v1/asymmetricSignatureKeys/{key_id}:signHash`
    SignHash(String),
    /// `GET /kms/v1/asymmetricSignatureKeys/{key_id}/publicKey`
    GetPublicKey(String),
    /// `POST /kms/v1/asymmetricSignatureKeys`
    CreateKey,
    /// `GET /kms/v1/asymmetricSignatureKeys/{key_id}`
    GetKey(String),
    /// `GET /kms/v1/asymmetricSignatureKeys`
    ListKeys,
    /// `PATCH /kms/v1/asymmetricSignatureKeys/{key_id}`
    UpdateKey(String),
    /// `DELETE /kms/v1/asymmetricSignatureKeys/{key_id}`
    DeleteKey(String),
    /// `GET /kms/v1/asymmetricSignatureKeys/{key_id}/operations`
    ListKeyOperations(String),
    /// `GET /kms/v1/asymmetricSignatureKeys/{resource_id}:listAccessBindings`
    ListAccessBindings(String),
    /// `POST /kms/v1/asymmetricSignatureKeys/{resource_id}:setAccessBindings`
    SetAccessBindings(String),
    /// `POST /kms/v1/asymmetricSignatureKeys/{resource_id}:updateAccessBindings`
    UpdateAccessBindings(String),
    /// `GET /operations/{operation_id}`
    GetOperation(String),
    /// `GET /operations/{operation_id}:cancel` (GET, as in the contract)
    CancelOperation(String),
    /// `GET /endpoints`
    ListEndpoints,
    /// `GET /endpoints/{api_endpoint_id}`
    GetEndpoint(String),
}

/// Why a request matched no binding.
#[derive(Debug)]
pub enum Unrouted {
    /// No binding has this path.
    NotFound,
    /// The path is bound, but not for this method; these are.
    MethodNotAllowed(&'static [Method]),
    /// A path value is not valid percent-encoded UTF-8.
    BadValue(Error),
}

/// The path shapes, before the method is looked at.
enum Shape {
    Keys,
    Key(String),
    KeyVerb(String, String),
    KeyChild(String, &'static str),
    Operation(String),
    OperationVerb(String, String),
    Endpoints,
    Endpoint(String),
}

fn decode(field: &str, raw: &str) -> Result<String, Unrouted> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            Unrouted::BadValue(Error::InvalidArgument(format!(
                "{field} in the URL path is not valid percent-encoded UTF-8"
            )))
        })
}

/// Splits the last segment at its verb: `abc:sign` → (`abc`, `sign`).
fn split_verb(segment: &str) -> (&str, Option<&str>) {
    match segment.rsplit_once(':') {
        Some((id, verb)) => (id, Some(verb)),
        None => (segment, None),
    }
}

fn shape(path: &str) -> Result<Shape, Unrouted> {
    if path == KEYS {
        return Ok(Shape::Keys);
    }
    if let Some(rest) = path.strip_prefix(KEYS).and_then(|r| r.strip_prefix('/')) {
        let segments: Vec<&str> = rest.split('/').collect();
        return match segments.as_slice() {
            [last] => match split_verb(last) {
                (id, None) => Ok(Shape::Key(decode("key_id", id)?)),
                (id, Some(verb)) => Ok(Shape::KeyVerb(decode("key_id", id)?, verb.to_string())),
            },
            [id, "publicKey"] => Ok(Shape::KeyChild(decode("key_id", id)?, "publicKey")),
            [id, "operations"] => Ok(Shape::KeyChild(decode("key_id", id)?, "operations")),
            _ => Err(Unrouted::NotFound),
        };
    }
    if let Some(last) = path.strip_prefix("/operations/") {
        if last.contains('/') {
            return Err(Unrouted::NotFound);
        }
        return match split_verb(last) {
            (id, None) => Ok(Shape::Operation(decode("operation_id", id)?)),
            (id, Some(verb)) => Ok(Shape::OperationVerb(
                decode("operation_id", id)?,
                verb.to_string(),
            )),
        };
    }
    if path == "/endpoints" {
        return Ok(Shape::Endpoints);
    }
    if let Some(id) = path.strip_prefix("/endpoints/") {
        if id.contains('/') {
            return Err(Unrouted::NotFound);
        }
        return Ok(Shape::Endpoint(decode("api_endpoint_id", id)?));
    }
    Err(Unrouted::NotFound)
}

const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];
const KEY_METHODS: &[Method] = &[Method::GET, Method::PATCH, Method::DELETE];
const COLLECTION_METHODS: &[Method] = &[Method::GET, Method::POST];

impl Route {
    /// The binding `method` and `path` (the URI path, still percent-encoded) name.
    ///
    /// # Errors
    /// [`Unrouted`]: no such path, a method the path is not bound for, or an undecodable id.
    pub fn parse(method: &Method, path: &str) -> Result<Self, Unrouted> {
        let allowed = |methods: &'static [Method], route: Route| {
            if methods.contains(method) {
                Ok(route)
            } else {
                Err(Unrouted::MethodNotAllowed(methods))
            }
        };
        match shape(path)? {
            Shape::Keys => match *method {
                Method::GET => Ok(Route::ListKeys),
                Method::POST => Ok(Route::CreateKey),
                _ => Err(Unrouted::MethodNotAllowed(COLLECTION_METHODS)),
            },
            Shape::Key(id) => match *method {
                Method::GET => Ok(Route::GetKey(id)),
                Method::PATCH => Ok(Route::UpdateKey(id)),
                Method::DELETE => Ok(Route::DeleteKey(id)),
                _ => Err(Unrouted::MethodNotAllowed(KEY_METHODS)),
            },
            Shape::KeyVerb(id, verb) => match verb.as_str() {
                "sign" => allowed(POST, Route::Sign(id)),
                "signHash" => allowed(POST, Route::SignHash(id)),
                "listAccessBindings" => allowed(GET, Route::ListAccessBindings(id)),
                "setAccessBindings" => allowed(POST, Route::SetAccessBindings(id)),
                "updateAccessBindings" => allowed(POST, Route::UpdateAccessBindings(id)),
                _ => Err(Unrouted::NotFound),
            },
            Shape::KeyChild(id, "publicKey") => allowed(GET, Route::GetPublicKey(id)),
            Shape::KeyChild(id, _) => allowed(GET, Route::ListKeyOperations(id)),
            Shape::Operation(id) => allowed(GET, Route::GetOperation(id)),
            Shape::OperationVerb(id, verb) if verb == "cancel" => {
                allowed(GET, Route::CancelOperation(id))
            }
            Shape::OperationVerb(..) => Err(Unrouted::NotFound),
            Shape::Endpoints => allowed(GET, Route::ListEndpoints),
            Shape::Endpoint(id) => allowed(GET, Route::GetEndpoint(id)),
        }
    }

    /// Whether the binding reads query parameters (the List methods); others take none.
    pub fn takes_query(&self) -> bool {
        matches!(
            self,
            Route::ListKeys
                | Route::ListKeyOperations(_)
                | Route::ListAccessBindings(_)
                | Route::ListEndpoints
        )
    }

    /// The gRPC method this binding maps to (`/package.Service/Method`), for the audit record.
    pub fn rpc(&self) -> &'static str {
        match self {
            Route::Sign(_) => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/Sign",
            Route::SignHash(_) => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/SignHash",
            Route::GetPublicKey(_) => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/GetPublicKey",
            Route::CreateKey => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/Create",
            Route::GetKey(_) => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/Get",
            Route::ListKeys => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/List",
            Route::UpdateKey(_) => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/Update",
            Route::DeleteKey(_) => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/Delete",
            Route::ListKeyOperations(_) => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/ListOperations",
            Route::ListAccessBindings(_) => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/ListAccessBindings",
            Route::SetAccessBindings(_) => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/SetAccessBindings",
            Route::UpdateAccessBindings(_) => "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService/UpdateAccessBindings",
            Route::GetOperation(_) => "/yandex.cloud.operation.OperationService/Get",
            Route::CancelOperation(_) => "/yandex.cloud.operation.OperationService/Cancel",
            Route::ListEndpoints => "/yandex.cloud.endpoint.ApiEndpointService/List",
            Route::GetEndpoint(_) => "/yandex.cloud.endpoint.ApiEndpointService/Get",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, path: &str) -> Result<Route, String> {
        Route::parse(&method, path).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn every_binding() {
        let k = |s: &str| s.to_string();
        let cases = [
            (
                Method::POST,
                "/kms/v1/asymmetricSignatureKeys/abc:sign",
                Route::Sign(k("abc")),
            ),
            (
                Method::POST,
                "/kms/v1/asymmetricSignatureKeys/abc:signHash",
                Route::SignHash(k("abc")),
            ),
            (
                Method::GET,
                "/kms/v1/asymmetricSignatureKeys/abc/publicKey",
                Route::GetPublicKey(k("abc")),
            ),
            (
                Method::POST,
                "/kms/v1/asymmetricSignatureKeys",
                Route::CreateKey,
            ),
            (
                Method::GET,
                "/kms/v1/asymmetricSignatureKeys",
                Route::ListKeys,
            ),
            (
                Method::GET,
                "/kms/v1/asymmetricSignatureKeys/abc",
                Route::GetKey(k("abc")),
            ),
            (
                Method::PATCH,
                "/kms/v1/asymmetricSignatureKeys/abc",
                Route::UpdateKey(k("abc")),
            ),
            (
                Method::DELETE,
                "/kms/v1/asymmetricSignatureKeys/abc",
                Route::DeleteKey(k("abc")),
            ),
            (
                Method::GET,
                "/kms/v1/asymmetricSignatureKeys/abc/operations",
                Route::ListKeyOperations(k("abc")),
            ),
            (
                Method::GET,
                "/kms/v1/asymmetricSignatureKeys/abc:listAccessBindings",
                Route::ListAccessBindings(k("abc")),
            ),
            (
                Method::POST,
                "/kms/v1/asymmetricSignatureKeys/abc:setAccessBindings",
                Route::SetAccessBindings(k("abc")),
            ),
            (
                Method::POST,
                "/kms/v1/asymmetricSignatureKeys/abc:updateAccessBindings",
                Route::UpdateAccessBindings(k("abc")),
            ),
            (
                Method::GET,
                "/operations/op1",
                Route::GetOperation(k("op1")),
            ),
            (
                Method::GET,
                "/operations/op1:cancel",
                Route::CancelOperation(k("op1")),
            ),
            (Method::GET, "/endpoints", Route::ListEndpoints),
            (Method::GET, "/endpoints/kms", Route::GetEndpoint(k("kms"))),
        ];
        for (method, path, want) in cases {
            assert_eq!(
                parse(method.clone(), path),
                Ok(want.clone()),
                "{method} {path}"
            );
            assert!(want.rpc().starts_with("/yandex.cloud."), "{want:?}");
        }
    }

    #[test]
    fn ids_are_percent_decoded_and_the_verb_is_the_last_colon() {
        assert_eq!(
            parse(
                Method::POST,
                "/kms/v1/asymmetricSignatureKeys/a%3Ab%2Fc%20%D1%8F:sign"
            ),
            Ok(Route::Sign("a:b/c я".into()))
        );
        assert_eq!(
            parse(
                Method::GET,
                "/kms/v1/asymmetricSignatureKeys/a:b:listAccessBindings"
            ),
            Ok(Route::ListAccessBindings("a:b".into()))
        );
        assert_eq!(
            parse(Method::POST, "/kms/v1/asymmetricSignatureKeys/:sign"),
            Ok(Route::Sign(String::new()))
        );
        assert!(parse(Method::GET, "/kms/v1/asymmetricSignatureKeys/%FF")
            .unwrap_err()
            .contains("BadValue"));
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        for path in [
            "/",
            "/kms/v1",
            "/kms/v1/asymmetricSignatureKeys/abc:bogus",
            "/kms/v1/asymmetricSignatureKeys/abc:",
            "/kms/v1/asymmetricSignatureKeys/../../etc/passwd",
            "/kms/v1/asymmetricSignatureKeys/a/b/c",
            "/kms/v1/asymmetricSignatureKeysX",
            "/operations/a/b",
            "/operations/a:delete",
            "/endpoints/a/b",
            "/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService/Sign",
        ] {
            assert_eq!(parse(Method::GET, path).unwrap_err(), "NotFound", "{path}");
        }
        let wrong = [
            (Method::GET, "/kms/v1/asymmetricSignatureKeys/abc:sign"),
            (Method::PUT, "/kms/v1/asymmetricSignatureKeys/abc"),
            (Method::DELETE, "/kms/v1/asymmetricSignatureKeys"),
            (Method::POST, "/operations/op1:cancel"),
            (
                Method::POST,
                "/kms/v1/asymmetricSignatureKeys/abc/publicKey",
            ),
            (Method::HEAD, "/endpoints"),
        ];
        for (method, path) in wrong {
            assert!(
                parse(method.clone(), path)
                    .unwrap_err()
                    .starts_with("MethodNotAllowed"),
                "{method} {path}"
            );
        }
    }
}
