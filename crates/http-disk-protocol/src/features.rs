//! The extension names a server advertises in [`crate::headers::FEATURES`].

use std::fmt;

/// One protocol extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// `POST` + `X-Disk-Op: flush` makes all earlier writes durable.
    Flush,
    /// `POST` + `X-Disk-Op: trim` discards a range (reads back as zeros).
    Trim,
    /// `POST` + `X-Disk-Op: zero` zeroes a range without sending zeros.
    Zero,
    /// `X-Disk-Writeback: 1` on writes defers durability to the next flush.
    Writeback,
    /// The server refuses every write (`--readonly`): PUT/trim/zero get 405.
    Readonly,
}

impl Feature {
    pub const ALL: [Feature; 5] = [
        Feature::Flush,
        Feature::Trim,
        Feature::Zero,
        Feature::Writeback,
        Feature::Readonly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::Flush => "flush",
            Feature::Trim => "trim",
            Feature::Zero => "zero",
            Feature::Writeback => "writeback",
            Feature::Readonly => "readonly",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The set of extensions one server offers. Unknown names (from a newer
/// server) are ignored, so servers can add features without breaking
/// older plugins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeatureSet(u8);

impl FeatureSet {
    pub fn empty() -> FeatureSet {
        FeatureSet(0)
    }

    pub fn with(self, feature: Feature) -> FeatureSet {
        FeatureSet(self.0 | feature.bit())
    }

    pub fn has(self, feature: Feature) -> bool {
        self.0 & feature.bit() != 0
    }

    /// Parses the header value (`flush, trim, zero, writeback`).
    pub fn parse(value: &str) -> FeatureSet {
        value
            .split(',')
            .map(str::trim)
            .filter_map(|name| Feature::ALL.into_iter().find(|f| f.name() == name))
            .fold(FeatureSet::empty(), FeatureSet::with)
    }
}

impl fmt::Display for FeatureSet {
    /// The header value, names in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Feature::ALL
            .into_iter()
            .filter(|feature| self.has(*feature))
            .map(Feature::name)
            .collect();
        f.write_str(&names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_names() {
        let set = FeatureSet::empty().with(Feature::Flush).with(Feature::Zero);
        assert_eq!(set.to_string(), "flush, zero");
        assert_eq!(FeatureSet::parse(&set.to_string()), set);
        let parsed = FeatureSet::parse(" trim ,teleport,writeback");
        assert!(parsed.has(Feature::Trim) && parsed.has(Feature::Writeback));
        assert!(!parsed.has(Feature::Flush));
        assert_eq!(FeatureSet::parse(""), FeatureSet::empty());
    }
}
