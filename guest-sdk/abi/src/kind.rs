//! The operators a plugin may implement.

use core::fmt;

/// The operator a plugin implements, as it declares it in `describe` (the
/// WIT `plugin-kind`), and as the host checks it against the stage using it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// One record out per record in.
    Map,
    /// Any number of records out per record in.
    FlatMap,
    /// Keeps or drops each record.
    Filter,
    /// Zero or one record out per record in.
    FilterMap,
    /// Any function of a whole partition.
    MapPartitions,
    /// Combines the values of a key.
    Reducer,
    /// All new values of a key and its state in, new state out.
    UpdateState,
    /// Per record with its key's state, plus timeouts.
    MapWithState,
    /// One partition of two inputs at once.
    TransformWith,
    /// Writes batches itself (a sink plugin). Not one of the WIT
    /// `plugin-kind` operators: a sink describes itself through the `sink`
    /// interface, so it is not in [`Kind::ALL`].
    Sink,
}

impl Kind {
    /// Every operator kind, in declaration order (the order of the WIT
    /// `plugin-kind` enum): every kind but [`Kind::Sink`].
    pub const ALL: [Kind; 9] = [
        Kind::Map,
        Kind::FlatMap,
        Kind::Filter,
        Kind::FilterMap,
        Kind::MapPartitions,
        Kind::Reducer,
        Kind::UpdateState,
        Kind::MapWithState,
        Kind::TransformWith,
    ];

    /// The kind's name as the WIT enum and pipeline files spell it
    /// (`"flat-map"`, `"reducer"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Map => "map",
            Kind::FlatMap => "flat-map",
            Kind::Filter => "filter",
            Kind::FilterMap => "filter-map",
            Kind::MapPartitions => "map-partitions",
            Kind::Reducer => "reducer",
            Kind::UpdateState => "update-state",
            Kind::MapWithState => "map-with-state",
            Kind::TransformWith => "transform-with",
            Kind::Sink => "sink",
        }
    }

    /// The operator kind called `name` (the inverse of [`Kind::name`] over
    /// [`Kind::ALL`]).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The WIT interface a plugin of this kind exports: `"transform"`,
    /// `"reducer"`, `"keyed-state"`, `"co-transform"` or `"sink"`.
    pub const fn interface(self) -> &'static str {
        match self {
            Kind::Map | Kind::FlatMap | Kind::Filter | Kind::FilterMap | Kind::MapPartitions => "transform",
            Kind::Reducer => "reducer",
            Kind::UpdateState | Kind::MapWithState => "keyed-state",
            Kind::TransformWith => "co-transform",
            Kind::Sink => "sink",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(Kind::from_name("reduce"), None);
        assert_eq!(Kind::MapWithState.name(), "map-with-state");
        assert_eq!(Kind::Filter.interface(), "transform");
        assert_eq!(Kind::UpdateState.interface(), "keyed-state");
    }
}
