//! Workload controllers: Deployment, ReplicaSet, StatefulSet, DaemonSet,
//! ReplicationController, ControllerRevision (apps/v1, core/v1) and Job, CronJob
//! (batch/v1): defaulting, validation and immutable fields.

use serde_json::{Value, json};

use super::pod::{default_pod_spec, validate_pod_template, validate_template_restart_always};
use super::util::{
    absent, arr, child, default_ptr, default_str, existing, get, i, obj, render_label_selector, s,
    s_at, sem_eq, strip_nulls,
};
use crate::api::selector::LabelSelector;
use crate::api::status::Cause;
use crate::api::validation::{
    forbidden, invalid, invalid_raw, invalid_str, is_valid_percent, not_supported,
    render_string_map, required, validate_label_selector, validate_nonnegative,
};

/// Label the Job controller puts on pods and selects (`batch.kubernetes.io/controller-uid`).
pub const JOB_CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

// ---------------------------------------------------------------------------------------
// Defaulting.

fn default_template(spec: &mut Value, path: &[&str]) {
    if let Some(t) = existing(spec, path)
        && let Some(ps) = child(t, "spec")
    {
        default_pod_spec(ps);
    }
}

/// `SetDefaults_Deployment` (and the template's pod defaults).
pub fn default_deployment(obj: &mut Value) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    default_ptr(spec, "replicas", json!(1));
    if let Some(strategy) = child(spec, "strategy") {
        default_str(strategy, "type", "RollingUpdate");
        if s(strategy, "type") == "RollingUpdate"
            && let Some(ru) = child(strategy, "rollingUpdate")
        {
            default_ptr(ru, "maxUnavailable", json!("25%"));
            default_ptr(ru, "maxSurge", json!("25%"));
        }
    }
    default_ptr(spec, "revisionHistoryLimit", json!(10));
    default_ptr(spec, "progressDeadlineSeconds", json!(600));
    default_template(spec, &["template"]);
}

/// `SetDefaults_ReplicaSet`.
pub fn default_replicaset(obj: &mut Value) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    default_ptr(spec, "replicas", json!(1));
    default_template(spec, &["template"]);
}

/// `SetDefaults_ReplicationController`: selector and labels from the template.
pub fn default_replicationcontroller(obj: &mut Value) {
    let template_labels = get(obj, &["spec", "template", "metadata", "labels"]).cloned();
    if let Some(labels) = template_labels.filter(Value::is_object) {
        if let Some(spec) = child(obj, "spec")
            && obj_len(spec, "selector") == 0
        {
            spec["selector"] = labels.clone();
        }
        if let Some(meta) = child(obj, "metadata")
            && obj_len(meta, "labels") == 0
        {
            meta["labels"] = labels;
        }
    }
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    default_ptr(spec, "replicas", json!(1));
    default_template(spec, &["template"]);
}

fn obj_len(v: &Value, key: &str) -> usize {
    obj(v, key).map_or(0, serde_json::Map::len)
}

/// `SetDefaults_StatefulSet` (plus PVC defaults in `volumeClaimTemplates`).
pub fn default_statefulset(obj: &mut Value) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    default_str(spec, "podManagementPolicy", "OrderedReady");
    if let Some(us) = child(spec, "updateStrategy") {
        if super::util::unset_str(us, "type") {
            us["type"] = json!("RollingUpdate");
            default_ptr(us, "rollingUpdate", json!({}));
        }
        if s(us, "type") == "RollingUpdate"
            && let Some(ru) = existing(us, &["rollingUpdate"])
        {
            default_ptr(ru, "partition", json!(0));
        }
    }
    if let Some(policy) = child(spec, "persistentVolumeClaimRetentionPolicy") {
        default_str(policy, "whenDeleted", "Retain");
        default_str(policy, "whenScaled", "Retain");
    }
    default_ptr(spec, "replicas", json!(1));
    default_ptr(spec, "revisionHistoryLimit", json!(10));
    default_template(spec, &["template"]);
    for pvc in super::util::items_mut(spec, "volumeClaimTemplates") {
        super::core::default_pvc(pvc);
    }
}

/// `SetDefaults_DaemonSet`.
pub fn default_daemonset(obj: &mut Value) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    if let Some(us) = child(spec, "updateStrategy") {
        default_str(us, "type", "RollingUpdate");
        if s(us, "type") == "RollingUpdate"
            && let Some(ru) = child(us, "rollingUpdate")
        {
            default_ptr(ru, "maxUnavailable", json!(1));
            default_ptr(ru, "maxSurge", json!(0));
        }
    }
    default_ptr(spec, "revisionHistoryLimit", json!(10));
    default_template(spec, &["template"]);
}

/// `SetDefaults_Job`, plus the generated selector when the Job has a uid already.
pub fn default_job(obj: &mut Value) {
    let template_labels = get(obj, &["spec", "template", "metadata", "labels"]).cloned();
    if let Some(labels) = template_labels.filter(Value::is_object)
        && let Some(meta) = child(obj, "metadata")
        && obj_len(meta, "labels") == 0
    {
        meta["labels"] = labels;
    }
    if let Some(spec) = child(obj, "spec") {
        default_job_spec(spec);
    }
    if !s_at(obj, &["metadata", "uid"]).is_empty() {
        generate_job_selector(obj);
    }
}

fn default_job_spec(spec: &mut Value) {
    if absent(spec, "completions") && absent(spec, "parallelism") {
        spec["completions"] = json!(1);
        spec["parallelism"] = json!(1);
    }
    default_ptr(spec, "parallelism", json!(1));
    if absent(spec, "backoffLimit") {
        let limit = if absent(spec, "backoffLimitPerIndex") {
            6
        } else {
            i64::from(i32::MAX)
        };
        spec["backoffLimit"] = json!(limit);
    }
    default_ptr(spec, "completionMode", json!("NonIndexed"));
    default_ptr(spec, "suspend", json!(false));
    let has_failure_policy = !absent(spec, "podFailurePolicy");
    if let Some(pfp) = existing(spec, &["podFailurePolicy"]) {
        for rule in super::util::items_mut(pfp, "rules") {
            for pattern in super::util::items_mut(rule, "onPodConditions") {
                default_str(pattern, "status", "True");
            }
        }
    }
    let replacement = if has_failure_policy {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    default_ptr(spec, "podReplacementPolicy", json!(replacement));
    default_template(spec, &["template"]);
}

/// The Job strategy's `generateSelector`: unless `spec.manualSelector` is true, label the
/// template with the job name and uid and select on the uid. Needs `metadata.uid` (and
/// `metadata.name`) to be set; idempotent.
pub fn generate_job_selector(obj: &mut Value) {
    if get(obj, &["spec", "manualSelector"]).and_then(Value::as_bool) == Some(true) {
        return;
    }
    let name = s_at(obj, &["metadata", "name"]).to_string();
    let uid = s_at(obj, &["metadata", "uid"]).to_string();
    if uid.is_empty() {
        return;
    }
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    if let Some(labels) = child(spec, "template")
        .and_then(|t| child(t, "metadata"))
        .and_then(|m| child(m, "labels"))
        .and_then(Value::as_object_mut)
    {
        for key in ["job-name", "batch.kubernetes.io/job-name"] {
            labels.entry(key).or_insert_with(|| json!(name));
        }
        for key in ["controller-uid", JOB_CONTROLLER_UID_LABEL] {
            labels.entry(key).or_insert_with(|| json!(uid));
        }
    }
    if let Some(ml) = child(spec, "selector")
        .and_then(|sel| child(sel, "matchLabels"))
        .and_then(Value::as_object_mut)
    {
        ml.entry(JOB_CONTROLLER_UID_LABEL)
            .or_insert_with(|| json!(uid));
    }
}

/// `SetDefaults_CronJob` (the job template gets pod defaults only, as upstream).
pub fn default_cronjob(obj: &mut Value) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    default_str(spec, "concurrencyPolicy", "Allow");
    default_ptr(spec, "suspend", json!(false));
    default_ptr(spec, "successfulJobsHistoryLimit", json!(3));
    default_ptr(spec, "failedJobsHistoryLimit", json!(1));
    default_template(spec, &["jobTemplate", "spec", "template"]);
}

// ---------------------------------------------------------------------------------------
// Validation.

/// How a controller validates its selector against its template.
struct SelectorRules {
    /// Word in "empty selector is invalid for <word>".
    word: &'static str,
    /// Deployment stops after a missing selector; the others go on (and also report the
    /// template labels mismatch, as upstream's "nothing" selector never matches).
    stop_when_missing: bool,
}

fn validate_selector_and_template(
    spec: &Value,
    rules: &SelectorRules,
    causes: &mut Vec<Cause>,
) -> bool {
    let sel = spec.get("selector").filter(|v| !v.is_null());
    match sel {
        None => {
            causes.push(required("spec.selector", ""));
            if rules.stop_when_missing {
                return false;
            }
        }
        Some(sel) => {
            causes.extend(validate_label_selector(Some(sel), "spec.selector"));
            if obj_len(sel, "matchLabels") + arr(sel, "matchExpressions").len() == 0 {
                causes.push(invalid_raw(
                    "spec.selector",
                    &render_label_selector(Some(sel)),
                    &format!("empty selector is invalid for {}", rules.word),
                ));
            }
        }
    }
    let template = spec.get("template").filter(|v| !v.is_null());
    match LabelSelector::from_label_selector_json(sel.unwrap_or(&Value::Null)) {
        Err(_) => causes.push(invalid_raw(
            "spec.selector",
            &render_label_selector(sel),
            "invalid label selector",
        )),
        Ok(selector) => {
            if let Some(t) = template
                && !selector.is_empty()
            {
                check_template_labels(&selector, t, "spec.template.metadata.labels", causes);
            }
            causes.extend(validate_pod_template(template, "spec.template"));
        }
    }
    true
}

fn check_template_labels(
    selector: &LabelSelector,
    template: &Value,
    path: &str,
    causes: &mut Vec<Cause>,
) {
    let labels = get(template, &["metadata", "labels"]).and_then(Value::as_object);
    if !selector.matches(labels) {
        causes.push(invalid_raw(
            path,
            &render_string_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
}

fn validate_int_or_percent(v: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    match v {
        Some(Value::String(p)) => {
            for msg in is_valid_percent(p) {
                causes.push(invalid_str(path, p, &msg));
            }
        }
        Some(n @ Value::Number(_)) => causes.extend(validate_nonnegative(Some(n), path)),
        _ => {}
    }
}

fn int_or_percent_value(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(p)) => p.trim_end_matches('%').parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn validate_rolling_update(ru: &Value, path: &str, causes: &mut Vec<Cause>) {
    let (mu, ms) = (ru.get("maxUnavailable"), ru.get("maxSurge"));
    validate_int_or_percent(mu, &format!("{path}.maxUnavailable"), causes);
    validate_int_or_percent(ms, &format!("{path}.maxSurge"), causes);
    if int_or_percent_value(mu) == 0 && int_or_percent_value(ms) == 0 {
        causes.push(invalid(
            format!("{path}.maxUnavailable"),
            mu.unwrap_or(&json!(0)),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
    if let Some(Value::String(p)) = mu
        && int_or_percent_value(mu) > 100
    {
        causes.push(invalid_str(
            format!("{path}.maxUnavailable"),
            p,
            "must not be greater than 100%",
        ));
    }
}

fn template_of(spec: &Value) -> Option<&Value> {
    spec.get("template").filter(|v| !v.is_null())
}

/// `ValidateDeploymentSpec`.
pub fn validate_deployment(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = validate_nonnegative(spec.get("replicas"), "spec.replicas");
    let rules = SelectorRules {
        word: "deployment",
        stop_when_missing: true,
    };
    if !validate_selector_and_template(spec, &rules, &mut causes) {
        return causes;
    }
    causes.extend(validate_template_restart_always(
        template_of(spec),
        "spec.template",
    ));
    if !absent(
        template_of(spec)
            .unwrap_or(&Value::Null)
            .get("spec")
            .unwrap_or(&Value::Null),
        "activeDeadlineSeconds",
    ) {
        causes.push(forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        ));
    }
    if let Some(strategy) = spec.get("strategy").filter(|v| !v.is_null()) {
        match s(strategy, "type") {
            "Recreate" => {
                if !absent(strategy, "rollingUpdate") {
                    causes.push(forbidden(
                        "spec.strategy.rollingUpdate",
                        "may not be specified when strategy `type` is 'Recreate'",
                    ));
                }
            }
            "RollingUpdate" => match strategy.get("rollingUpdate").filter(|v| !v.is_null()) {
                Some(ru) => validate_rolling_update(ru, "spec.strategy.rollingUpdate", &mut causes),
                None => causes.push(required(
                    "spec.strategy.rollingUpdate",
                    "this should be defaulted and never be nil",
                )),
            },
            "" => {}
            other => causes.push(not_supported(
                "spec.strategy.type",
                other,
                &["Recreate", "RollingUpdate"],
            )),
        }
    }
    causes.extend(validate_nonnegative(
        spec.get("minReadySeconds"),
        "spec.minReadySeconds",
    ));
    causes.extend(validate_nonnegative(
        spec.get("revisionHistoryLimit"),
        "spec.revisionHistoryLimit",
    ));
    if let Some(pds) = i(spec, "progressDeadlineSeconds") {
        causes.extend(validate_nonnegative(
            spec.get("progressDeadlineSeconds"),
            "spec.progressDeadlineSeconds",
        ));
        if pds <= i(spec, "minReadySeconds").unwrap_or(0) {
            causes.push(invalid(
                "spec.progressDeadlineSeconds",
                &json!(pds),
                "must be greater than minReadySeconds",
            ));
        }
    }
    causes
}

/// `ValidateReplicaSetSpec`.
pub fn validate_replicaset(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = validate_nonnegative(spec.get("replicas"), "spec.replicas");
    causes.extend(validate_nonnegative(
        spec.get("minReadySeconds"),
        "spec.minReadySeconds",
    ));
    // Upstream says "deployment" here too.
    let rules = SelectorRules {
        word: "deployment",
        stop_when_missing: false,
    };
    validate_selector_and_template(spec, &rules, &mut causes);
    causes.extend(validate_template_restart_always(
        template_of(spec),
        "spec.template",
    ));
    if get(spec, &["template", "spec", "activeDeadlineSeconds"]).is_some() {
        causes.push(forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        ));
    }
    causes
}

/// `ValidateStatefulSetSpec`.
pub fn validate_statefulset(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = Vec::new();
    let pmp = s(spec, "podManagementPolicy");
    if !pmp.is_empty() && pmp != "OrderedReady" && pmp != "Parallel" {
        causes.push(invalid_str(
            "spec.podManagementPolicy",
            pmp,
            "must be 'OrderedReady' or 'Parallel'",
        ));
    }
    if let Some(us) = spec.get("updateStrategy").filter(|v| !v.is_null()) {
        match s(us, "type") {
            "RollingUpdate" | "" => {
                if let Some(ru) = us.get("rollingUpdate").filter(|v| !v.is_null()) {
                    causes.extend(validate_nonnegative(
                        ru.get("partition"),
                        "spec.updateStrategy.rollingUpdate.partition",
                    ));
                }
            }
            "OnDelete" => {
                if let Some(ru) = us.get("rollingUpdate").filter(|v| !v.is_null()) {
                    causes.push(invalid(
                        "spec.updateStrategy.rollingUpdate",
                        ru,
                        "only allowed for updateStrategy 'RollingUpdate'",
                    ));
                }
            }
            _ => causes.push(invalid(
                spec_path("updateStrategy"),
                us,
                "must be 'RollingUpdate' or 'OnDelete'",
            )),
        }
    }
    causes.extend(validate_nonnegative(spec.get("replicas"), "spec.replicas"));
    causes.extend(validate_nonnegative(
        spec.get("minReadySeconds"),
        "spec.minReadySeconds",
    ));
    let rules = SelectorRules {
        word: "statefulset",
        stop_when_missing: false,
    };
    // The template's volumes together with one per volumeClaimTemplate, which the
    // controller adds to each pod (so mounts of claim volumes are not "Not found").
    let mut with_claims = spec.clone();
    let claims: Vec<Value> = arr(spec, "volumeClaimTemplates")
        .iter()
        .filter_map(|c| get(c, &["metadata", "name"]).and_then(Value::as_str))
        .map(|n| json!({"name": n, "persistentVolumeClaim": {"claimName": n}}))
        .collect();
    if let Some(pod_spec) = with_claims
        .get_mut("template")
        .and_then(|t| t.get_mut("spec"))
        .and_then(Value::as_object_mut)
        && !claims.is_empty()
    {
        let vols = pod_spec
            .entry("volumes")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(v) = vols.as_array_mut() {
            v.retain(|x| !claims.iter().any(|c| c["name"] == x["name"]));
            v.extend(claims);
        }
    }
    validate_selector_and_template(&with_claims, &rules, &mut causes);
    causes.extend(validate_template_restart_always(
        template_of(spec),
        "spec.template",
    ));
    if get(spec, &["template", "spec", "activeDeadlineSeconds"]).is_some() {
        causes.push(forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in StatefulSet is not Supported",
        ));
    }
    causes
}

fn spec_path(field: &str) -> String {
    format!("spec.{field}")
}

/// `ValidateDaemonSetSpec`.
pub fn validate_daemonset(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = Vec::new();
    let rules = SelectorRules {
        word: "daemonset",
        stop_when_missing: false,
    };
    validate_selector_and_template(spec, &rules, &mut causes);
    causes.extend(validate_template_restart_always(
        template_of(spec),
        "spec.template",
    ));
    if let Some(ads) = get(spec, &["template", "spec", "activeDeadlineSeconds"]) {
        causes.push(invalid(
            "spec.template.spec.activeDeadlineSeconds",
            ads,
            "activeDeadlineSeconds in DaemonSet is not Supported",
        ));
    }
    causes.extend(validate_nonnegative(
        spec.get("minReadySeconds"),
        "spec.minReadySeconds",
    ));
    causes.extend(validate_nonnegative(
        spec.get("revisionHistoryLimit"),
        "spec.revisionHistoryLimit",
    ));
    if let Some(us) = spec.get("updateStrategy").filter(|v| !v.is_null()) {
        match s(us, "type") {
            "RollingUpdate" => {
                if let Some(ru) = us.get("rollingUpdate").filter(|v| !v.is_null()) {
                    validate_rolling_update(ru, "spec.updateStrategy.rollingUpdate", &mut causes);
                }
            }
            "OnDelete" | "" => {}
            other => causes.push(not_supported(
                "spec.updateStrategy.type",
                other,
                &["OnDelete", "RollingUpdate"],
            )),
        }
    }
    causes
}

/// `ValidateReplicationControllerSpec` (the selector is a plain map).
pub fn validate_replicationcontroller(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = validate_nonnegative(spec.get("replicas"), "spec.replicas");
    causes.extend(validate_nonnegative(
        spec.get("minReadySeconds"),
        "spec.minReadySeconds",
    ));
    let selector = super::util::obj(spec, "selector");
    if selector.is_none_or(serde_json::Map::is_empty) {
        causes.push(required("spec.selector", ""));
    }
    causes.extend(crate::api::validation::validate_labels(
        spec.get("selector"),
        "spec.selector",
    ));
    let template = template_of(spec);
    if let (Some(sel), Some(t)) = (selector, template) {
        let labels = get(t, &["metadata", "labels"]).and_then(Value::as_object);
        let matches = sel
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
        if !sel.is_empty() && !matches {
            causes.push(invalid_raw(
                "spec.template.metadata.labels",
                &render_string_map(labels),
                "`selector` does not match template `labels`",
            ));
        }
    }
    causes.extend(validate_pod_template(template, "spec.template"));
    if template.is_some() {
        causes.extend(validate_template_restart_always(template, "spec.template"));
        if get(spec, &["template", "spec", "activeDeadlineSeconds"]).is_some() {
            causes.push(forbidden(
                "spec.template.spec.activeDeadlineSeconds",
                "activeDeadlineSeconds in ReplicationController is not Supported",
            ));
        }
    }
    causes
}

/// `ValidateControllerRevision`.
pub fn validate_controllerrevision(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if absent(obj, "data") {
        causes.push(required("data", ""));
    }
    causes.extend(validate_nonnegative(obj.get("revision"), "revision"));
    causes
}

fn validate_job_spec(spec: &Value, path: &str, is_template: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    for key in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        causes.extend(validate_nonnegative(
            spec.get(key),
            &format!("{path}.{key}"),
        ));
    }
    let manual = get(spec, &["manualSelector"]).and_then(Value::as_bool) == Some(true);
    let sel = spec.get("selector").filter(|v| !v.is_null());
    let template = spec.get("template").filter(|v| !v.is_null());
    if is_template {
        if let Some(sel) = sel {
            causes.push(invalid_raw(
                format!("{path}.selector"),
                &render_label_selector(Some(sel)),
                "`selector` will be auto-generated",
            ));
        }
        if manual {
            causes.push(not_supported(
                format!("{path}.manualSelector"),
                "true",
                &["nil", "false"],
            ));
        }
    } else {
        match sel {
            None if manual => causes.push(required(format!("{path}.selector"), "")),
            None => {}
            Some(sel) => {
                causes.extend(validate_label_selector(
                    Some(sel),
                    &format!("{path}.selector"),
                ));
                if let (Ok(selector), Some(t)) =
                    (LabelSelector::from_label_selector_json(sel), template)
                {
                    check_template_labels(
                        &selector,
                        t,
                        &format!("{path}.template.metadata.labels"),
                        &mut causes,
                    );
                }
            }
        }
    }
    let mode = s(spec, "completionMode");
    match mode {
        "" | "NonIndexed" => {}
        "Indexed" => {
            if absent(spec, "completions") {
                causes.push(required(
                    format!("{path}.completions"),
                    "when completion mode is Indexed",
                ));
            }
        }
        other => causes.push(not_supported(
            format!("{path}.completionMode"),
            other,
            &["NonIndexed", "Indexed"],
        )),
    }
    let prp = s(spec, "podReplacementPolicy");
    if !prp.is_empty() && prp != "Failed" && prp != "TerminatingOrFailed" {
        causes.push(not_supported(
            format!("{path}.podReplacementPolicy"),
            prp,
            &["Failed", "TerminatingOrFailed"],
        ));
    }
    causes.extend(validate_pod_template(template, &format!("{path}.template")));
    let restart = template.map_or("", |t| s_at(t, &["spec", "restartPolicy"]));
    if restart != "OnFailure" && restart != "Never" {
        causes.push(not_supported(
            format!("{path}.template.spec.restartPolicy"),
            restart,
            &["OnFailure", "Never"],
        ));
    }
    causes
}

/// `ValidateJob`.
pub fn validate_job(obj: &Value) -> Vec<Cause> {
    validate_job_spec(obj.get("spec").unwrap_or(&Value::Null), "spec", false)
}

/// `ValidateCronJobCreate`.
pub fn validate_cronjob(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = s_at(obj, &["metadata", "name"]);
    if name.len() > 52 {
        causes.push(invalid_str(
            "metadata.name",
            name,
            "must be no more than 52 characters",
        ));
    }
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let schedule = s(spec, "schedule");
    if schedule.is_empty() {
        causes.push(required("spec.schedule", ""));
    } else if let Err(e) = validate_cron_schedule(schedule) {
        causes.push(invalid_str("spec.schedule", schedule, &e));
    }
    let cp = s(spec, "concurrencyPolicy");
    if !cp.is_empty() && !["Allow", "Forbid", "Replace"].contains(&cp) {
        causes.push(not_supported(
            "spec.concurrencyPolicy",
            cp,
            &["Allow", "Forbid", "Replace"],
        ));
    }
    for key in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        causes.extend(validate_nonnegative(spec.get(key), &format!("spec.{key}")));
    }
    if let Some(tz) = spec.get("timeZone").and_then(Value::as_str) {
        let detail = if tz.is_empty() {
            Some("timeZone must be nil or non-empty string".to_string())
        } else if tz.eq_ignore_ascii_case("local") {
            Some("timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones".to_string())
        } else if tz != "UTC" && jiff::tz::TimeZone::get(tz).is_err() {
            Some(format!("unknown time zone {tz}"))
        } else {
            None
        };
        if let Some(d) = detail {
            causes.push(invalid_str("spec.timeZone", tz, &d));
        }
    }
    let jt = spec.get("jobTemplate").unwrap_or(&Value::Null);
    causes.extend(crate::api::validation::validate_labels(
        get(jt, &["metadata", "labels"]),
        "spec.jobTemplate.metadata.labels",
    ));
    causes.extend(validate_job_spec(
        jt.get("spec").unwrap_or(&Value::Null),
        "spec.jobTemplate.spec",
        true,
    ));
    causes
}

/// Checks a standard cron schedule (5 fields or an `@` descriptor) like robfig/cron's
/// `ParseStandard`, which upstream uses; Err carries its message.
pub fn validate_cron_schedule(schedule: &str) -> Result<(), String> {
    if schedule.starts_with("TZ=") || schedule.starts_with("CRON_TZ=") || schedule.contains(" TZ=")
    {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".to_string());
    }
    if let Some(desc) = schedule.strip_prefix('@') {
        return match desc {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => {
                Ok(())
            }
            d if d.starts_with("every ") => Ok(()),
            _ => Err(format!("unrecognized descriptor: {schedule}")),
        };
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    const MONTHS: &[&str] = &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let bounds: [(u32, u32, &[&str], u32); 5] = [
        (0, 59, &[], 0),
        (0, 23, &[], 0),
        (1, 31, &[], 0),
        (1, 12, MONTHS, 1),
        (0, 6, DAYS, 0),
    ];
    for (field, (lo, hi, names, name_base)) in fields.iter().zip(bounds) {
        for part in field.split(',') {
            check_cron_range(part, lo, hi, names, name_base)?;
        }
    }
    Ok(())
}

fn check_cron_range(
    expr: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(), String> {
    let (range, step) = match expr.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (expr, None),
    };
    let num = |t: &str| -> Result<u32, String> {
        if let Some(pos) = names.iter().position(|n| n.eq_ignore_ascii_case(t)) {
            return Ok(u32::try_from(pos).unwrap_or(0) + name_base);
        }
        t.parse::<u32>().map_err(|_| {
            format!("failed to parse int from {t}: strconv.Atoi: parsing {t:?}: invalid syntax")
        })
    };
    let (start, end) = if range == "*" || range == "?" {
        (lo, hi)
    } else if let Some((a, b)) = range.split_once('-') {
        (num(a)?, num(b)?)
    } else {
        let v = num(range)?;
        (v, if step.is_some() { hi } else { v })
    };
    if let Some(step) = step {
        let n = step.parse::<u32>().map_err(|_| {
            format!(
                "failed to parse int from {step}: strconv.Atoi: parsing {step:?}: invalid syntax"
            )
        })?;
        if n == 0 {
            return Err(format!("step of range should be a positive number: {expr}"));
        }
    }
    if start < lo {
        return Err(format!(
            "beginning of range ({start}) below minimum ({lo}): {expr}"
        ));
    }
    if end > hi {
        return Err(format!("end of range ({end}) above maximum ({hi}): {expr}"));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Updates.

fn immutable(
    new: Option<&Value>,
    old: Option<&Value>,
    field: &str,
    rendered: String,
    causes: &mut Vec<Cause>,
) {
    if !sem_eq(new, old) {
        causes.push(invalid_raw(field, &rendered, "field is immutable"));
    }
}

fn immutable_selector(new: &Value, old: &Value, causes: &mut Vec<Cause>) {
    let (n, o) = (
        get(new, &["spec", "selector"]),
        get(old, &["spec", "selector"]),
    );
    immutable(n, o, "spec.selector", render_label_selector(n), causes);
}

/// Deployment, ReplicaSet and DaemonSet: the selector is immutable in apps/v1.
pub fn validate_selector_immutable(new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    immutable_selector(new, old, &mut causes);
    causes
}

/// `ValidateStatefulSetUpdate`: only some spec fields may change.
pub fn validate_statefulset_update(new: &Value, old: &Value) -> Vec<Cause> {
    const MUTABLE: &[&str] = &[
        "replicas",
        "template",
        "updateStrategy",
        "minReadySeconds",
        "ordinals",
        "revisionHistoryLimit",
        "persistentVolumeClaimRetentionPolicy",
    ];
    let strip = |v: &Value| {
        let mut spec = strip_nulls(v.get("spec").unwrap_or(&Value::Null));
        if let Some(m) = spec.as_object_mut() {
            for k in MUTABLE {
                m.remove(*k);
            }
        }
        spec
    };
    if sem_eq(Some(&strip(new)), Some(&strip(old))) {
        Vec::new()
    } else {
        vec![forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        )]
    }
}

/// `ValidateJobUpdate`: selector, completion mode, completions (non-indexed) and the
/// template are immutable; a suspended Job that never started may change its template's
/// scheduling directives (node selector, tolerations, affinity, scheduling gates, labels
/// and annotations).
pub fn validate_job_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    immutable_selector(new, old, &mut causes);
    for key in [
        "completionMode",
        "podFailurePolicy",
        "backoffLimitPerIndex",
        "managedBy",
        "successPolicy",
    ] {
        let (n, o) = (get(new, &["spec", key]), get(old, &["spec", key]));
        let rendered = n.map_or_else(|| "null".to_string(), crate::api::validation::render_value);
        immutable(n, o, &format!("spec.{key}"), rendered, &mut causes);
    }
    if s_at(new, &["spec", "completionMode"]) != "Indexed" {
        let (n, o) = (
            get(new, &["spec", "completions"]),
            get(old, &["spec", "completions"]),
        );
        let rendered = n.map_or_else(|| "null".to_string(), crate::api::validation::render_value);
        immutable(n, o, "spec.completions", rendered, &mut causes);
    }
    let (nt, ot) = (
        get(new, &["spec", "template"]),
        get(old, &["spec", "template"]),
    );
    if !sem_eq(nt, ot) {
        let suspended_never_started = get(old, &["spec", "suspend"]).and_then(Value::as_bool)
            == Some(true)
            && get(old, &["status", "startTime"]).is_none();
        let scheduling_only = suspended_never_started && {
            let strip = |t: Option<&Value>| {
                let mut t = strip_nulls(t.unwrap_or(&Value::Null));
                if let Some(m) = t.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("labels");
                    m.remove("annotations");
                }
                if let Some(m) = t.get_mut("spec").and_then(Value::as_object_mut) {
                    for k in ["nodeSelector", "tolerations", "affinity", "schedulingGates"] {
                        m.remove(k);
                    }
                }
                t
            };
            sem_eq(Some(&strip(nt)), Some(&strip(ot)))
        };
        if !scheduling_only {
            let rendered = nt.map_or_else(|| "null".to_string(), Value::to_string);
            causes.push(invalid_raw(
                "spec.template",
                &rendered,
                "field is immutable",
            ));
        }
    }
    causes
}

/// ControllerRevision data is immutable.
pub fn validate_controllerrevision_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let (n, o) = (new.get("data"), old.get("data"));
    immutable(
        n,
        o,
        "data",
        n.map_or_else(|| "null".to_string(), Value::to_string),
        &mut causes,
    );
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(c: &[Cause]) -> Vec<String> {
        c.iter()
            .map(|c| format!("{} {}", c.field, c.reason))
            .collect()
    }

    fn deployment() -> Value {
        json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    }

    #[test]
    fn deployment_defaults() {
        let mut d = deployment();
        default_deployment(&mut d);
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            spec["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Always"
        );
        let mut r = deployment();
        r["spec"]["strategy"] = json!({"type": "Recreate"});
        default_deployment(&mut r);
        assert_eq!(r["spec"]["strategy"], json!({"type": "Recreate"}));
        assert!(
            validate_deployment(&d).is_empty(),
            "{:?}",
            validate_deployment(&d)
        );
    }

    #[test]
    fn workload_validation_table() {
        let mut no_selector = deployment();
        no_selector["spec"]
            .as_object_mut()
            .unwrap()
            .remove("selector");
        let mut mismatch = deployment();
        mismatch["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        let mut empty_sel = deployment();
        empty_sel["spec"]["selector"] = json!({});
        let mut negative = deployment();
        negative["spec"]["replicas"] = json!(-1);
        let mut never = deployment();
        never["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        let mut bad_strategy = deployment();
        bad_strategy["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "0%"}});

        // Mounts of volumeClaimTemplates are valid in a StatefulSet (the controller adds
        // the volumes), not elsewhere.
        let mut claim_mount = deployment();
        claim_mount["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "data", "mountPath": "/data"}]);
        claim_mount["spec"]["volumeClaimTemplates"] =
            json!([{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]);
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("deploy", deployment(), vec![]),
            (
                "deploy",
                no_selector.clone(),
                vec!["spec.selector FieldValueRequired"],
            ),
            (
                "deploy",
                mismatch.clone(),
                vec!["spec.template.metadata.labels FieldValueInvalid"],
            ),
            (
                "deploy",
                empty_sel.clone(),
                vec!["spec.selector FieldValueInvalid"],
            ),
            ("deploy", negative, vec!["spec.replicas FieldValueInvalid"]),
            (
                "deploy",
                never.clone(),
                vec!["spec.template.spec.restartPolicy FieldValueNotSupported"],
            ),
            (
                "deploy",
                bad_strategy,
                vec!["spec.strategy.rollingUpdate.maxUnavailable FieldValueInvalid"],
            ),
            ("rs", deployment(), vec![]),
            (
                "rs",
                no_selector.clone(),
                vec![
                    "spec.selector FieldValueRequired",
                    "spec.template.metadata.labels FieldValueInvalid",
                ],
            ),
            ("sts", deployment(), vec![]),
            ("sts", claim_mount.clone(), vec![]),
            (
                "ds",
                claim_mount,
                vec!["spec.template.spec.containers[0].volumeMounts[0].name FieldValueNotFound"],
            ),
            (
                "sts",
                empty_sel.clone(),
                vec!["spec.selector FieldValueInvalid"],
            ),
            ("ds", deployment(), vec![]),
            (
                "ds",
                mismatch,
                vec!["spec.template.metadata.labels FieldValueInvalid"],
            ),
            (
                "ds",
                never,
                vec!["spec.template.spec.restartPolicy FieldValueNotSupported"],
            ),
        ];
        for (kind, obj, want) in cases {
            let got = match kind {
                "deploy" => validate_deployment(&obj),
                "rs" => validate_replicaset(&obj),
                "sts" => validate_statefulset(&obj),
                _ => validate_daemonset(&obj),
            };
            assert_eq!(fields(&got), want, "{kind} {obj}");
        }
        let mut mismatch = deployment();
        mismatch["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        let c = validate_deployment(&mismatch);
        assert_eq!(
            c[0].message,
            "Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`"
        );
        let c = validate_statefulset(&empty_sel);
        assert_eq!(
            c[0].message,
            "Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for statefulset"
        );
    }

    #[test]
    fn other_defaults() {
        let mut sts = deployment();
        sts["spec"]["volumeClaimTemplates"] =
            json!([{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]);
        default_statefulset(&mut sts);
        assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            sts["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]["volumeMode"],
            "Filesystem"
        );
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["status"]["phase"],
            "Pending"
        );

        let mut ds = deployment();
        default_daemonset(&mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);

        let mut rc = json!({"spec": {"template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        default_replicationcontroller(&mut rc);
        assert_eq!(rc["spec"]["selector"], json!({"app": "x"}));
        assert_eq!(rc["metadata"]["labels"], json!({"app": "x"}));
        assert_eq!(rc["spec"]["replicas"], 1);
        assert!(
            validate_replicationcontroller(&rc).is_empty(),
            "{:?}",
            validate_replicationcontroller(&rc)
        );

        let mut job = json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "perl"}]}}}});
        default_job(&mut job);
        let spec = &job["spec"];
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
        assert_eq!(
            spec["selector"]["matchLabels"][JOB_CONTROLLER_UID_LABEL],
            "u-1"
        );
        assert_eq!(spec["template"]["metadata"]["labels"]["job-name"], "pi");
        assert_eq!(
            spec["template"]["metadata"]["labels"]["controller-uid"],
            "u-1"
        );
        assert!(validate_job(&job).is_empty(), "{:?}", validate_job(&job));

        let mut par = json!({"spec": {"parallelism": 3}});
        default_job_spec(par.get_mut("spec").unwrap());
        assert!(par["spec"].get("completions").is_none());

        let mut cj = json!({"metadata": {"name": "c"}, "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "i"}]}}}}}});
        default_cronjob(&mut cj);
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["suspend"], false);
        assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
        assert_eq!(
            cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"],
            "ClusterFirst"
        );
        assert!(
            cj["spec"]["jobTemplate"]["spec"]
                .get("backoffLimit")
                .is_none()
        );
        assert!(
            validate_cronjob(&cj).is_empty(),
            "{:?}",
            validate_cronjob(&cj)
        );
    }

    #[test]
    fn cronjob_time_zones() {
        let cj = |tz: &str| {
            json!({"metadata": {"name": "c"}, "spec": {"schedule": "* * * * *", "timeZone": tz,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}})
        };
        for ok in ["Europe/Berlin", "America/New_York", "UTC", "Etc/UTC"] {
            assert!(validate_cronjob(&cj(ok)).is_empty(), "{ok}");
        }
        for bad in ["", "Local", "Mars/Olympus"] {
            let c = validate_cronjob(&cj(bad));
            assert_eq!(c.len(), 1, "{bad}: {c:?}");
            assert_eq!(c[0].field, "spec.timeZone");
        }
    }

    #[test]
    fn jobs_and_cronjobs() {
        let job = json!({"spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}});
        let c = validate_job(&job);
        assert_eq!(
            fields(&c),
            vec!["spec.template.spec.restartPolicy FieldValueNotSupported"]
        );
        assert_eq!(
            c[0].message,
            "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );

        let cj = json!({"metadata": {"name": "x".repeat(53)}, "spec": {"schedule": "bogus", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}});
        let c = validate_cronjob(&cj);
        assert_eq!(
            fields(&c),
            vec![
                "metadata.name FieldValueInvalid",
                "spec.schedule FieldValueInvalid"
            ]
        );
        assert_eq!(
            c[1].message,
            "Invalid value: \"bogus\": expected exactly 5 fields, found 1: [bogus]"
        );

        for ok in [
            "* * * * *",
            "0 0 * * 0",
            "*/15 1-5 1,15 jan-mar mon-fri",
            "@hourly",
            "@every 1h",
            "0 0 ? * SUN",
        ] {
            assert!(validate_cron_schedule(ok).is_ok(), "{ok}");
        }
        for bad in [
            "60 * * * *",
            "* * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
            "@never",
            "TZ=UTC * * * * *",
        ] {
            assert!(validate_cron_schedule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn updates() {
        let old = deployment();
        let mut new = deployment();
        new["spec"]["replicas"] = json!(5);
        assert!(validate_selector_immutable(&new, &old).is_empty());
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web2"}});
        let c = validate_selector_immutable(&new, &old);
        assert_eq!(
            c[0].message,
            "Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
        );

        let mut sts_new = deployment();
        sts_new["spec"]["replicas"] = json!(3);
        assert!(validate_statefulset_update(&sts_new, &old).is_empty());
        sts_new["spec"]["serviceName"] = json!("x");
        assert_eq!(validate_statefulset_update(&sts_new, &old)[0].field, "spec");

        let job = json!({"spec": {"completions": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let mut j2 = job.clone();
        j2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("j");
        j2["spec"]["completions"] = json!(2);
        assert_eq!(
            fields(&validate_job_update(&j2, &job)),
            vec![
                "spec.completions FieldValueInvalid",
                "spec.template FieldValueInvalid"
            ]
        );
        let mut suspended = job.clone();
        suspended["spec"]["suspend"] = json!(true);
        let mut s2 = suspended.clone();
        s2["spec"]["template"]["spec"]["nodeSelector"] = json!({"zone": "a"});
        assert!(validate_job_update(&s2, &suspended).is_empty());
    }
}
