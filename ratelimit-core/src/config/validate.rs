//! Policy validation shared by the top-level policy and the rules' policies: a [`PolicyError`]
//! becomes a [`ConfigError`] naming the configuration field at fault.

use super::error::ConfigError;
use crate::policy::{Policy, PolicyError};

/// Validates a policy whose windows live at `<base>.windows`, naming the field at fault.
pub(crate) fn validate_policy(policy: &Policy, base: &str) -> Result<(), ConfigError> {
    policy.validate().map_err(|e| {
        let field = match &e {
            PolicyError::Name(_) => format!("{base}.name"),
            PolicyError::NoWindow => format!("{base}.windows"),
            PolicyError::ZeroLimit { index }
            | PolicyError::LimitTooLarge { index }
            | PolicyError::LogTooLarge { index }
            | PolicyError::CounterTooLarge { index } => {
                format!("{base}.windows[{index}].max_requests")
            }
            PolicyError::WindowTooShort { index }
            | PolicyError::WindowTooLong { index }
            | PolicyError::DuplicateWindow { index } => {
                format!("{base}.windows[{index}].duration")
            }
            PolicyError::CostAboveLimit { .. } => format!("{base}.cost"),
            PolicyError::Spread(_)
            | PolicyError::SpreadAlgorithm
            | PolicyError::SpreadAboveLimit { .. } => format!("{base}.spread"),
        };
        let message = e.to_string();
        let message = message
            .split_once(": ")
            .filter(|(head, _)| head.starts_with("window "))
            .map_or(message.clone(), |(_, tail)| tail.to_owned());
        ConfigError::invalid(field, message)
    })
}
