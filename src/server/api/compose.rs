//! Overlap of tasks' grafts, and composition of tasks into a new one.
//!
//! Overlap takes at most `max_overlap_tasks` names and computes off the async runtime, over the base's
//! tensor shapes ([`overlap_over`], [`compose_over`]: no weights are read). A composition is
//! all-or-nothing: every member, label and measurement is checked and computed first, on a composed task that
//! is not yet registered; the new task is stored and registered only when everything succeeded. A composed
//! graft larger than the import limit (`max_graft_bytes`) is refused with 413 before any measurement, since
//! its file could not be imported again.

use super::predict::{accuracy_of, labelled, LabelledInput};
use super::tasks::{summary, TaskSummary};
use super::{blocking, labels_of, task, St};
use crate::engine::ServedTask;
use crate::graft::overlap::{compose_over, overlap_over, ConflictRule};
use crate::graft::Graft;
use crate::server::error::{ApiError, ApiResult, ErrorBody, ErrorKind};
use crate::server::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// `?tasks=a,b,c`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OverlapQuery {
    /// Comma-separated task names (at most `max_overlap_tasks`, 32 by default).
    #[param(min_length = 1)]
    pub tasks: String,
}

/// The members of a request, looked up, with one region for all (409 when their regions differ).
fn members_of(s: &AppState, names: &[String]) -> ApiResult<Vec<Arc<ServedTask>>> {
    let tasks: Vec<Arc<ServedTask>> = names.iter().map(|n| task(s, n)).collect::<ApiResult<_>>()?;
    let first = tasks
        .first()
        .ok_or_else(|| ApiError::bad_request("name at least one task"))?;
    if tasks
        .iter()
        .any(|t| t.graft.manifest.region != first.graft.manifest.region)
    {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "the tasks' grafts use different regions",
        ));
    }
    Ok(tasks)
}

/// Overlap of tasks' grafts: counts, Jaccard and containment matrices, random baseline, per-layer and
/// per-module breakdowns.
#[utoipa::path(get, path = "/v1/overlap", security(("api_key" = ["read"])), params(OverlapQuery),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn overlap(
    State(s): St,
    Query(q): Query<OverlapQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let names: Vec<String> = q
        .tasks
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if names.is_empty() {
        return Err(ApiError::bad_request("name at least one task: ?tasks=a,b"));
    }
    if names.len() > s.config.max_overlap_tasks {
        return Err(ApiError::too_large(format!(
            "{} tasks; at most {} per overlap query",
            names.len(),
            s.config.max_overlap_tasks
        )));
    }
    let tasks = members_of(&s, &names)?;
    let st = s.clone();
    let report = blocking(move || {
        let grafts: Vec<Graft> = tasks.iter().map(|t| t.graft.clone()).collect();
        let report = overlap_over(&names, &grafts, &st.base.weights)
            .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        serde_json::to_value(report).map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(report))
}

/// How shared coordinates are resolved.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The mean of the members' values.
    Mean,
    /// The later member's value.
    LastWins,
}

impl From<Rule> for ConflictRule {
    fn from(r: Rule) -> Self {
        match r {
            Rule::Mean => ConflictRule::Mean,
            Rule::LastWins => ConflictRule::LastWins,
        }
    }
}

/// A composition request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompositionRequest {
    /// Name of the new composed task.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")]
    pub name: String,
    /// Member tasks (order matters for `last_wins`): at least two.
    #[schema(min_items = 2)]
    pub tasks: Vec<String>,
    /// How shared coordinates are resolved.
    #[serde(default = "mean_rule")]
    pub rule: Rule,
    /// Labelled examples per member task, to measure each one's accuracy alone and under the composition.
    #[serde(default)]
    pub data: BTreeMap<String, Vec<LabelledInput>>,
}

fn mean_rule() -> Rule {
    Rule::Mean
}

impl CompositionRequest {
    /// Checks the name, the member count, and that data names only members.
    pub fn check(&self) -> ApiResult<()> {
        if !crate::store::service::valid_name(&self.name) {
            return Err(ApiError::bad_request(format!(
                "invalid task name `{}`: {}",
                self.name,
                crate::store::service::NAME_RULE
            )));
        }
        if self.tasks.len() < 2 {
            return Err(ApiError::bad_request(
                "a composition needs at least two tasks",
            ));
        }
        if let Some(k) = self.data.keys().find(|k| !self.tasks.contains(k)) {
            return Err(ApiError::bad_request(format!(
                "`data` names `{k}`, which is not a member of the composition"
            )));
        }
        Ok(())
    }
}

/// How one member fares under the composition.
#[derive(Serialize, ToSchema)]
pub struct MemberReport {
    /// Member task.
    pub task: String,
    /// Labelled examples measured (absent without data for this member).
    pub examples: Option<usize>,
    /// Accuracy of the member alone.
    pub alone: Option<f64>,
    /// Accuracy of the member's head on the composed body.
    pub composed: Option<f64>,
}

/// A composed task and how each member fares under it.
#[derive(Serialize, ToSchema)]
pub struct CompositionResponse {
    /// The new task.
    pub task: TaskSummary,
    /// One per member, in order.
    pub members: Vec<MemberReport>,
}

/// Compose tasks' grafts (union; shared coordinates by rule) into a new task with the first member's head;
/// with data, report each member's accuracy alone and under it. Nothing is created unless all succeeds, and
/// nothing larger than a graft import may be (413).
#[utoipa::path(post, path = "/v1/compositions", security(("api_key" = ["admin"])), request_body = CompositionRequest,
    responses((status = 201, body = CompositionResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn compose(
    State(s): St,
    Json(req): Json<CompositionRequest>,
) -> ApiResult<(StatusCode, Json<CompositionResponse>)> {
    req.check()?;
    let members = members_of(&s, &req.tasks)?;
    // Every label is checked before any work.
    let mut data = Vec::with_capacity(members.len());
    for m in &members {
        data.push(match req.data.get(&m.name) {
            Some(ex) => Some(labelled(
                &labels_of(m),
                ex,
                &format!("task {}: example", m.name),
            )?),
            None => None,
        });
    }
    let st = s.clone();
    let rule: ConflictRule = req.rule.into();
    let names = req.tasks.clone();
    let mems = members.clone();
    let (bytes, graft) = blocking(move || {
        let grafts: Vec<Graft> = mems.iter().map(|t| t.graft.clone()).collect();
        let composed = compose_over(&grafts, &names, &st.base.weights, rule)
            .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        let bytes = composed.to_bytes().map_err(ApiError::internal)?;
        // Refused before any measurement: what is stored must be importable again.
        st.check_importable(
            &format!(
                "the composed graft ({} entries from {} tasks)",
                composed.size(),
                names.len()
            ),
            &bytes,
        )?;
        let graft = st.check_graft(&bytes)?;
        Ok((bytes, graft))
    })
    .await?;
    let mut report = Vec::with_capacity(members.len());
    for (m, d) in members.iter().zip(data) {
        let Some((ids, inputs)) = d else {
            report.push(MemberReport {
                task: m.name.clone(),
                examples: None,
                alone: None,
                composed: None,
            });
            continue;
        };
        let alone = accuracy_of(&s, m, &ids, inputs.clone()).await?;
        // The member's own head on the composed body, served without being registered.
        let mut g = graft.clone();
        g.head = m.graft.head.clone();
        g.manifest.head = m.graft.manifest.head.clone();
        let under_task = Arc::new(ServedTask {
            name: format!("{}@{}", m.name, req.name),
            graft: g,
            version: s.fresh_version(),
        });
        let under = accuracy_of(&s, &under_task, &ids, inputs).await?;
        report.push(MemberReport {
            task: m.name.clone(),
            examples: Some(ids.len()),
            alone: Some(alone),
            composed: Some(under),
        });
    }
    let st = s.clone();
    let name = req.name.clone();
    let composed = blocking(move || st.store_task(&name, &bytes, graft)).await?;
    Ok((
        StatusCode::CREATED,
        Json(CompositionResponse {
            task: summary(&composed),
            members: report,
        }),
    ))
}
