//! `setters!`, which writes the `with_*` builder methods of the configuration and policy
//! types: each takes `self` by value, sets one field and returns `self`. Written once so that
//! a setter reads as one line under its doc comment.

/// Writes builder setters inside an `impl` block, each with its doc comment and visibility:
///
/// ```text
/// setters! {
///     /// Standalone or cluster.
///     pub fn with_mode(mode: RedisMode);
///     /// The prefix of every Redis key.
///     pub fn with_prefix(prefix: impl Into<String>) sets prefix = prefix.into();
/// }
/// ```
///
/// `fn with_mode(mode: RedisMode);` sets the field named like the argument; `sets field =
/// value` names the field and computes its value from the argument.
macro_rules! setters {
    (@set $this:ident, $arg:ident) => {
        $this.$arg = $arg;
    };
    (@set $this:ident, $arg:ident, $field:ident = $value:expr) => {
        $this.$field = $value;
    };
    ($(
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($arg:ident: $ty:ty) $(sets $field:ident = $value:expr)?;
    )*) => {$(
        $(#[$attr])*
        $vis fn $name(mut self, $arg: $ty) -> Self {
            setters!(@set self, $arg $(, $field = $value)?);
            self
        }
    )*};
}
