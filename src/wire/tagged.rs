//! The `type` tag of Kizuna's MessagePack maps (control messages, relay messages, punch
//! messages): each map's first key is `type`, read alone first to pick the body decoder.

use serde::{de::IgnoredAny, Deserialize, Serialize};

/// Just the `type` field of a map; every other field is skipped.
#[derive(Deserialize)]
pub(crate) struct Tag<'a> {
    /// The message type.
    #[serde(rename = "type", borrow)]
    pub(crate) ty: std::borrow::Cow<'a, str>,
}

/// The `type` field of a body: a fixed string when encoding, skipped when decoding
/// (already read through [`Tag`]).
#[derive(Default)]
pub(crate) struct TypeTag(pub(crate) &'static str);

impl Serialize for TypeTag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for TypeTag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| TypeTag::default())
    }
}
