//! Who looks at the UI: the token a request presents (`Authorization:
//! Bearer`, or the `weir_ui` cookie the login form sets), the viewer it
//! stands for, and the login and logout pages.

use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{COOKIE, Ui, UiError, Viewer, page, pages};

/// The token a request presents: `Authorization: Bearer`, or the UI's cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(token.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| percent_decode(value))
}

/// `text` with every byte but letters, digits and `-._~` as `%XX` (a
/// cookie value that any token fits in).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The text [`percent_encode`] made; `None` for a malformed value.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The viewer of a page (redirected to the login form without one).
pub(super) struct PageViewer(pub(super) Viewer);
/// The viewer of a stream or an action (401 without one).
pub(super) struct CallViewer(pub(super) Viewer);

/// The viewer of a request; a token presented but unknown is held back as
/// the throttle says.
async fn viewer_of(parts: &Parts, ui: &Ui) -> Option<Viewer> {
    let token = presented_token(&parts.headers);
    let viewer = ui.directory.viewer(token.as_deref());
    if viewer.is_none() && token.is_some() {
        ui.failed_authentication(&parts.extensions).await;
    }
    viewer
}

impl FromRequestParts<Ui> for PageViewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Self::Rejection> {
        viewer_of(parts, ui)
            .await
            .map(Self)
            .ok_or(UiError::LoggedOut { page: true })
    }
}

impl FromRequestParts<Ui> for CallViewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Self::Rejection> {
        viewer_of(parts, ui)
            .await
            .map(Self)
            .ok_or(UiError::LoggedOut { page: false })
    }
}

pub(super) async fn login_form(State(ui): State<Ui>) -> Response {
    if ui.directory.viewer(None).is_some() {
        return Redirect::to("/ui/").into_response();
    }
    page(pages::login(None))
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

pub(super) async fn login(
    State(ui): State<Ui>,
    extensions: axum::http::Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    let token = form.token.trim().to_owned();
    if token.is_empty() || ui.directory.viewer(Some(&token)).is_none() {
        ui.failed_authentication(&extensions).await;
        let mut response = page(pages::login(Some("That token is not known here.")));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    let secure = if ui.secure { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict{secure}",
        percent_encode(&token)
    );
    let mut response = Redirect::to("/ui/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

pub(super) async fn logout() -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("weir_ui=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; weir_ui=weir_1_2; c=d"),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("weir_1_2"));
        let token = "a+b/c=d é";
        let cookie = format!("weir_ui={}", percent_encode(token));
        headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some(token));
        assert_eq!(percent_decode("%zz"), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer weir_3_4"));
        assert_eq!(presented_token(&headers).as_deref(), Some("weir_3_4"));
    }
}
