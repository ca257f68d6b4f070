//! The MCP methods a proxy treats differently, as an enum instead of string compares or table
//! indices: which are only reads (safe to send again after a failure), and their wire names.

use crate::JsonStr;

/// An MCP request method mcplb knows by name; anything else is [`Method::Other`].
///
/// The discriminants are stable indices (statistics keep one row per method in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Method {
    /// `initialize` (2025 era: opens a session).
    Initialize = 0,
    /// `ping`.
    Ping = 1,
    /// `tools/list`.
    ToolsList = 2,
    /// `tools/call`: runs a tool, which may change the world.
    ToolsCall = 3,
    /// `resources/list`.
    ResourcesList = 4,
    /// `resources/read`.
    ResourcesRead = 5,
    /// `resources/templates/list`.
    ResourceTemplatesList = 6,
    /// `prompts/list`.
    PromptsList = 7,
    /// `prompts/get`.
    PromptsGet = 8,
    /// `completion/complete`.
    CompletionComplete = 9,
    /// `logging/setLevel`.
    LoggingSetLevel = 10,
    /// `server/discover` (2026-07-28).
    ServerDiscover = 11,
    /// Any other method (its effects are unknown to mcplb, so it is never re-sent).
    #[default]
    Other = 12,
}

impl Method {
    /// Every named method, in discriminant order (without [`Method::Other`]).
    pub const NAMED: [Method; 12] = [
        Method::Initialize,
        Method::Ping,
        Method::ToolsList,
        Method::ToolsCall,
        Method::ResourcesList,
        Method::ResourcesRead,
        Method::ResourceTemplatesList,
        Method::PromptsList,
        Method::PromptsGet,
        Method::CompletionComplete,
        Method::LoggingSetLevel,
        Method::ServerDiscover,
    ];

    /// The method a JSON-RPC `method` string names.
    pub fn of(name: &JsonStr<'_>) -> Method {
        if !name.has_escapes() {
            return Method::from_name(name.raw_str());
        }
        Method::NAMED
            .iter()
            .copied()
            .find(|m| name.eq_str(m.name()))
            .unwrap_or(Method::Other)
    }

    /// The method a plain string names.
    pub fn from_name(name: &str) -> Method {
        Method::NAMED
            .iter()
            .copied()
            .find(|m| m.name() == name)
            .unwrap_or(Method::Other)
    }

    /// The wire name (`"other"` for [`Method::Other`]).
    pub const fn name(self) -> &'static str {
        match self {
            Method::Initialize => "initialize",
            Method::Ping => "ping",
            Method::ToolsList => "tools/list",
            Method::ToolsCall => "tools/call",
            Method::ResourcesList => "resources/list",
            Method::ResourcesRead => "resources/read",
            Method::ResourceTemplatesList => "resources/templates/list",
            Method::PromptsList => "prompts/list",
            Method::PromptsGet => "prompts/get",
            Method::CompletionComplete => "completion/complete",
            Method::LoggingSetLevel => "logging/setLevel",
            Method::ServerDiscover => "server/discover",
            Method::Other => "other",
        }
    }

    /// Whether the method only reads: sending it again after a failure cannot run anything
    /// twice. Everything else (`tools/call`, `initialize`, `logging/setLevel`, unknown
    /// methods) may change state on the server and is never re-sent once it may have arrived.
    pub const fn is_read_only(self) -> bool {
        matches!(
            self,
            Method::Ping
                | Method::ToolsList
                | Method::ResourcesList
                | Method::ResourcesRead
                | Method::ResourceTemplatesList
                | Method::PromptsList
                | Method::PromptsGet
                | Method::CompletionComplete
                | Method::ServerDiscover
        )
    }

    /// Whether the method's `params.name` names a tool or prompt (rate-limit and statistics
    /// rules match on it).
    pub const fn has_name(self) -> bool {
        matches!(self, Method::ToolsCall | Method::PromptsGet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order_is_stable() {
        for (i, m) in Method::NAMED.iter().enumerate() {
            assert_eq!(*m as usize, i);
            assert_eq!(Method::from_name(m.name()), *m);
        }
        assert_eq!(Method::from_name("tools/cal"), Method::Other);
        assert_eq!(Method::Other as usize, Method::NAMED.len());
    }

    #[test]
    fn only_reads_are_read_only() {
        assert!(!Method::ToolsCall.is_read_only());
        assert!(!Method::Initialize.is_read_only());
        assert!(!Method::LoggingSetLevel.is_read_only());
        assert!(!Method::Other.is_read_only());
        assert!(Method::ToolsList.is_read_only());
        assert!(Method::ResourcesRead.is_read_only());
    }

    #[test]
    fn json_names_with_escapes_match() {
        let env = crate::parse_message(br#"{"jsonrpc":"2.0","id":1,"method":"tools\/call"}"#);
        let method = env.ok().and_then(|e| e.method).map(|m| Method::of(&m));
        assert_eq!(method, Some(Method::ToolsCall));
    }
}
