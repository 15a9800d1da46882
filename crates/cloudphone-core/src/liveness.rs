//! Node liveness from heartbeats.
