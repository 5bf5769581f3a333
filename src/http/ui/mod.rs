//! The web UI at `/ui/`: server-rendered pages (`pages`, maud templates) over the views in
//! `crate::views`, one embedded stylesheet, no JavaScript. `/` redirects here.
//!
//! Everything a page shows is filtered by what the visitor may pull (`session::Viewer`, the
//! same `Policy` the API consults); a repository the visitor may not pull is answered as if
//! it did not exist. State-changing requests are POSTs carrying the CSRF token of
//! `session`; deletes go through the same transaction bodies as the API's `DELETE`.

mod pages;
mod session;

pub use session::UiState;

use std::sync::Arc;

use maud::Markup;
use warp::http::{header, StatusCode};
use warp::reply::Response;

use super::{read_small, reply, Request, State};
use crate::auth::users::Action;
use crate::config::AuthMode;
use crate::db;
use crate::oci::{ErrorCode, Reference, RegistryError, RepoName};
use crate::store::BodyStream;
use crate::views::{self, NameFilter};
use pages::Frame;
use session::Viewer;

const STYLE: &str = include_str!("style.css");
/// Repositories per page of the list.
const PAGE: usize = 50;
/// Tags per page of a repository.
const TAG_PAGE: usize = 100;
/// The largest form the UI accepts (a login, a delete).
const MAX_FORM: usize = 16 * 1024;

/// `GET /`: the UI, if it is on.
pub fn root(state: &State) -> Response {
    if !state.ui.enabled {
        return reply::error(
            RegistryError::new(ErrorCode::Unsupported, "no such endpoint").with_status(404),
        );
    }
    redirect("/ui/", None)
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut b = reply::empty(StatusCode::SEE_OTHER).header(header::LOCATION, to);
    if let Some(c) = cookie {
        b = b.header(header::SET_COOKIE, c);
    }
    reply::finish(b, "")
}

/// An HTML answer with the headers every page carries: no caching (pages differ per
/// visitor), no framing, and a policy that allows our stylesheet and nothing else.
fn page(status: StatusCode, viewer: &Viewer, state: &State, markup: Markup) -> Response {
    let mut b = reply::builder(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header("X-Frame-Options", "DENY")
        .header("X-Content-Type-Options", "nosniff")
        .header("Referrer-Policy", "same-origin")
        .header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'",
        );
    if let Some(n) = &viewer.new_nonce {
        b = b.header(header::SET_COOKIE, state.ui.nonce_cookie(n));
    }
    reply::finish(b, markup.into_string())
}

/// Every request under `/ui`.
pub async fn handle(state: Arc<State>, tail: &str, req: Request, body: BodyStream) -> Response {
    if !state.ui.enabled {
        return reply::error(
            RegistryError::new(ErrorCode::Unsupported, "no such endpoint").with_status(404),
        );
    }
    if tail == "style.css" {
        return reply::finish(
            reply::builder(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/css; charset=utf-8")
                .header(header::CACHE_CONTROL, "public, max-age=3600"),
            STYLE,
        );
    }
    let policy = if state.config.auth.mode == AuthMode::None {
        None
    } else {
        match state.access.policy(&state.db).await {
            Ok(p) => Some(p),
            Err(e) => return reply::error(e),
        }
    };
    let viewer = state.ui.viewer(req.header("cookie"), policy);
    let csrf = state.ui.csrf_token(&viewer);
    let ui = Ui {
        state: &state,
        viewer: &viewer,
        csrf: &csrf,
        req: &req,
    };
    match ui.route(tail, body).await {
        Ok(resp) => resp,
        Err(e) => {
            let (status, title) = match e.status() {
                404 => (StatusCode::NOT_FOUND, "Not found"),
                403 => (StatusCode::FORBIDDEN, "Forbidden"),
                409 => (StatusCode::CONFLICT, "Refused"),
                400 => (StatusCode::BAD_REQUEST, "Bad request"),
                413 => (StatusCode::PAYLOAD_TOO_LARGE, "Too large"),
                429 => (StatusCode::TOO_MANY_REQUESTS, "Too many attempts"),
                _ => {
                    tracing::error!(error = %e.message, "ui request failed");
                    (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong")
                }
            };
            let f = ui.frame("");
            page(
                status,
                &viewer,
                &state,
                pages::message(&f, title, &e.message),
            )
        }
    }
}

fn not_found() -> RegistryError {
    RegistryError::new(
        ErrorCode::NameUnknown,
        "No such repository or manifest here.",
    )
    .with_status(404)
}

fn forbidden(message: &str) -> RegistryError {
    RegistryError::new(ErrorCode::Denied, message).with_status(403)
}

struct Ui<'a> {
    state: &'a State,
    viewer: &'a Viewer,
    csrf: &'a str,
    req: &'a Request,
}

impl Ui<'_> {
    fn frame<'b>(&'b self, here: &'b str) -> Frame<'b> {
        Frame {
            viewer: self.viewer,
            csrf: self.csrf,
            here,
        }
    }

    fn ok(&self, markup: Markup) -> Response {
        page(StatusCode::OK, self.viewer, self.state, markup)
    }

    /// The `host[:port]` clients pull from: the one the browser used.
    fn host(&self) -> String {
        self.req
            .header("host")
            .map(str::to_string)
            .unwrap_or_else(|| self.state.config.listen.to_string())
    }

    async fn route(&self, tail: &str, body: BodyStream) -> Result<Response, RegistryError> {
        let post = self.req.method == warp::http::Method::POST;
        let get = matches!(
            self.req.method,
            warp::http::Method::GET | warp::http::Method::HEAD
        );
        match tail {
            "" if get => self.repo_list().await,
            "storage" if get => self.storage().await,
            "admin" if get => self.admin(),
            "login" if get => Ok(self.ok(pages::login_page(&self.frame("login"), None, ""))),
            "login" if post => self.login(body).await,
            "logout" if post => {
                self.check_csrf(body).await?;
                Ok(redirect(
                    "/ui/",
                    Some(self.state.ui.close(self.req.header("cookie"))),
                ))
            }
            _ => {
                if let Some(name) = tail.strip_prefix("r/").filter(|_| get) {
                    let name = name.trim_end_matches('/');
                    let name = RepoName::parse(name).ok_or_else(not_found)?;
                    return self.repository(name).await;
                }
                if let Some(target) = tail.strip_prefix("m/").filter(|_| get) {
                    let (name, r) = views::parse_target(target).ok_or_else(not_found)?;
                    return self.manifest(name, r).await;
                }
                if let Some(target) = tail.strip_prefix("delete/") {
                    let (name, r) = views::parse_target(target).ok_or_else(not_found)?;
                    if get {
                        return self.confirm_delete(name, r, target);
                    }
                    if post {
                        return self.delete(name, r, body).await;
                    }
                }
                Err(not_found())
            }
        }
    }

    /// The `?page=` asked for, from 1.
    fn page(&self) -> usize {
        self.req
            .query("page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(1)
            .max(1)
    }

    /// The repository, if the visitor may pull it (else "not found", which tells nothing).
    fn visible(&self, name: &RepoName) -> Result<(), RegistryError> {
        if self.viewer.may(name.as_str(), Action::Pull) {
            Ok(())
        } else {
            Err(not_found())
        }
    }

    async fn repo_list(&self) -> Result<Response, RegistryError> {
        let q = self.req.query("q").unwrap_or_default().to_string();
        let filter = NameFilter::parse(&q)
            .map_err(|e| RegistryError::new(ErrorCode::Unsupported, e).with_status(400))?;
        let offset = (self.page() - 1).saturating_mul(PAGE);
        let policy = self.viewer_policy();
        let list = self
            .state
            .db
            .read(move |tx| {
                views::repositories(tx, &filter, offset, PAGE, |r| policy.may(r, Action::Pull))
            })
            .await?;
        Ok(self.ok(pages::repo_list(&self.frame("repos"), &list, &q)))
    }

    async fn repository(&self, name: RepoName) -> Result<Response, RegistryError> {
        self.visible(&name)?;
        let n = name.clone();
        let offset = (self.page() - 1).saturating_mul(TAG_PAGE);
        let detail = self
            .state
            .db
            .read(move |tx| views::repository(tx, n.as_str(), offset, TAG_PAGE))
            .await?
            .ok_or_else(not_found)?;
        let tls = self.state.config.tls.is_some();
        Ok(self.ok(pages::repo_page(
            &self.frame("repos"),
            &detail,
            &self.host(),
            tls,
        )))
    }

    async fn manifest(&self, name: RepoName, r: Reference) -> Result<Response, RegistryError> {
        self.visible(&name)?;
        let store = self.state.store.clone();
        let view = self
            .state
            .db
            .read(move |tx| views::manifest(tx, &store, &name, &r))
            .await?
            .ok_or_else(not_found)?;
        let tls = self.state.config.tls.is_some();
        Ok(self.ok(pages::manifest_page(
            &self.frame("repos"),
            &view,
            &self.host(),
            tls,
        )))
    }

    async fn storage(&self) -> Result<Response, RegistryError> {
        let core = self.state.core.clone();
        let policy = self.viewer_policy();
        let view = tokio::task::spawn_blocking(move || {
            let usage = crate::gc::usage::measure(&core)
                .map_err(|e| RegistryError::internal(e.to_string()))?;
            let last = core
                .last_gc
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            Ok::<_, RegistryError>(views::storage(&usage, last.as_ref(), |r| {
                policy.may(r, Action::Pull)
            }))
        })
        .await
        .map_err(|e| RegistryError::internal(format!("storage task: {e}")))??;
        Ok(self.ok(pages::storage_page(&self.frame("storage"), &view)))
    }

    fn admin(&self) -> Result<Response, RegistryError> {
        if !self.viewer.is_admin() {
            return Err(forbidden("Only administrators may see users and grants."));
        }
        Ok(self.ok(pages::admin_page(&self.frame("admin"))))
    }

    /// Reads the form and checks its CSRF token before anything else happens.
    async fn check_csrf(&self, body: BodyStream) -> Result<Vec<(String, String)>, RegistryError> {
        let body = read_small(body, MAX_FORM).await?;
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let token = form
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        if !self.state.ui.csrf_ok(self.viewer, token) {
            return Err(forbidden(
                "The form's security token is missing or stale: reload the page and try again.",
            ));
        }
        Ok(form)
    }

    /// Checks the password with `http::auth` (its throttle and credential cache included),
    /// as if the browser had sent Basic credentials, and opens a session.
    async fn login(&self, body: BodyStream) -> Result<Response, RegistryError> {
        let form = self.check_csrf(body).await?;
        let field = |k: &str| {
            form.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (user, password) = (field("username"), field("password"));
        let Some(policy) = self.viewer.policy() else {
            return Ok(self.ok(pages::login_page(&self.frame("login"), None, "")));
        };
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut headers = warp::http::HeaderMap::new();
        if let Ok(v) = format!("Basic {basic}").parse() {
            headers.insert(header::AUTHORIZATION, v);
        }
        let probe = Request {
            method: warp::http::Method::GET,
            headers,
            query: Vec::new(),
            remote: self.req.remote,
            id: self.req.id,
        };
        let checked = self
            .state
            .auth
            .authorize(self.state, &probe, super::auth::Need::Login)
            .await;
        match checked {
            Ok(caller) if caller.user() == Some(user.as_str()) => {
                let hash = policy.hash_of(&user).unwrap_or_default().to_string();
                let cookie = self.state.ui.open(&user, &hash);
                tracing::info!(user, "ui login");
                Ok(redirect("/ui/", Some(cookie)))
            }
            Ok(_) => Err(RegistryError::internal("login answered for another user")),
            Err(e) if e.status() == 429 => Err(RegistryError::new(
                ErrorCode::TooManyRequests,
                "Too many failed sign-ins: try again later.",
            )
            .with_status(429)),
            Err(e) if e.code == ErrorCode::Unauthorized => Ok(page(
                StatusCode::UNAUTHORIZED,
                self.viewer,
                self.state,
                pages::login_page(
                    &self.frame("login"),
                    Some("Incorrect user name or password."),
                    &user,
                ),
            )),
            Err(e) => Err(e),
        }
    }

    fn confirm_delete(
        &self,
        name: RepoName,
        r: Reference,
        target: &str,
    ) -> Result<Response, RegistryError> {
        self.visible(&name)?;
        if !self.viewer.may(name.as_str(), Action::Delete) {
            return Err(forbidden("You may not delete from this repository."));
        }
        let is_tag = matches!(r, Reference::Tag(_));
        Ok(self.ok(pages::confirm_delete(
            &self.frame("repos"),
            name.as_str(),
            target,
            is_tag,
        )))
    }

    /// Deletes a tag or a manifest: the API's rules (delete permission, a manifest an index
    /// lists is refused) and its transaction bodies.
    async fn delete(
        &self,
        name: RepoName,
        r: Reference,
        body: BodyStream,
    ) -> Result<Response, RegistryError> {
        self.check_csrf(body).await?;
        if !self.viewer.may(name.as_str(), Action::Delete) {
            tracing::info!(user = self.viewer.user.as_deref(), repo = %name, "ui delete denied");
            return Err(forbidden("You may not delete from this repository."));
        }
        // The API's delete: immutable tags refused, the delete event recorded.
        let who = super::manifests::request_info(self.state, self.req, self.viewer.user.as_deref());
        let removed = super::manifests::delete_recorded(self.state, name.clone(), r, who).await?;
        if !removed {
            return Err(not_found());
        }
        tracing::info!(user = self.viewer.user.as_deref(), repo = %name, "ui delete");
        let still = self
            .state
            .db
            .read({
                let n = name.clone();
                move |tx| Ok(tx.open_table(db::schema::REPOS)?.get(n.as_str())?.is_some())
            })
            .await?;
        Ok(redirect(
            &if still {
                pages::repo_url(name.as_str())
            } else {
                "/ui/".to_string()
            },
            None,
        ))
    }

    /// What the visitor may do, as a value the blocking pool can take.
    fn viewer_policy(&self) -> Permissions {
        Permissions {
            policy: self.viewer.policy_arc(),
            user: self.viewer.user.clone(),
        }
    }
}

/// A `Send` copy of the visitor's permissions for view builders on the blocking pool.
struct Permissions {
    policy: Option<Arc<crate::auth::users::Policy>>,
    user: Option<String>,
}

impl Permissions {
    fn may(&self, repo: &str, action: Action) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|p| p.allows(self.user.as_deref(), repo, action))
    }
}
