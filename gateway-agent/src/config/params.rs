//! Validation of typed parameters: constraints that fit their type, patterns that compile
//! within the protocol's limits, and no more patterns than the hub compiles per `hello`.

use std::collections::BTreeSet;

use super::validate::{one_line, problem, Problem};
use super::{GatewayConfig, ParamConfig, ParamType};

/// The hub compiles at most `MAX_PATTERNS_PER_HELLO` patterns of one `hello` (in verb order,
/// then parameter name order) and refuses the verbs of the rest: refuse such a config here.
pub(super) fn validate_pattern_count(config: &GatewayConfig) -> Result<(), Problem> {
    use agentmesh_protocol::pattern::MAX_PATTERNS_PER_HELLO as MAX;
    let mut patterned = config.verbs.iter().enumerate().flat_map(|(i, verb)| {
        verb.params
            .iter()
            .filter(|(_, p)| p.pattern.is_some())
            .map(move |(name, _)| format!("verbs[{i}].params.{name}.pattern"))
    });
    match patterned.nth(MAX) {
        Some(key) => Err(problem(
            key,
            format!("more than {MAX} patterns across all verbs; the hub compiles at most {MAX}"),
        )),
        None => Ok(()),
    }
}

/// Checks one parameter; `key` is its dotted config key.
pub(super) fn validate_param(key: &str, p: &ParamConfig) -> Result<(), Problem> {
    let misplaced = |field: &str, belongs: &str| {
        Err(problem(
            format!("{key}.{field}"),
            format!(
                "only applies to {belongs} parameters, this one is {}",
                p.kind.as_str()
            ),
        ))
    };
    if p.kind != ParamType::String {
        if p.pattern.is_some() {
            return misplaced("pattern", "string");
        }
        if p.max_len.is_some() {
            return misplaced("max_len", "string");
        }
        if p.allow_leading_dash.is_some() {
            return misplaced("allow_leading_dash", "string");
        }
    }
    if p.kind != ParamType::Integer {
        if p.min.is_some() {
            return misplaced("min", "integer");
        }
        if p.max.is_some() {
            return misplaced("max", "integer");
        }
    }
    if p.kind != ParamType::Enum && p.values.is_some() {
        return misplaced("values", "enum");
    }
    if let Some(pattern) = &p.pattern {
        agentmesh_protocol::verbs::compile_pattern(pattern)
            .map_err(|e| problem(format!("{key}.pattern"), one_line(&e.to_string())))?;
    }
    if p.max_len == Some(0) {
        return Err(problem(format!("{key}.max_len"), "must be at least 1"));
    }
    if let (Some(min), Some(max)) = (p.min, p.max) {
        if min > max {
            return Err(problem(
                format!("{key}.min"),
                format!("{min} is larger than max ({max})"),
            ));
        }
    }
    if p.kind == ParamType::Enum {
        let values = p.values.as_deref().unwrap_or_default();
        if values.is_empty() {
            return Err(problem(
                format!("{key}.values"),
                "an enum parameter needs at least one value",
            ));
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = values.iter().find(|v| !seen.insert(v.as_str())) {
            return Err(problem(
                format!("{key}.values"),
                format!("{dup:?} is listed twice"),
            ));
        }
    }
    Ok(())
}
