package identity

// DefaultTrustDomain is the trust domain of a mesh installed with defaults.
// Workload IDs are built and parsed by package identity/meshid, which the
// proxy links without this package.
const DefaultTrustDomain = "cluster.local"
