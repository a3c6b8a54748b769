// Package version is mesh's release, one value for every binary: the
// controller stamps it on injected pods and uses it as the proxy image's
// default tag, and meshctl reports it. Release builds set it with
// -ldflags "-X github.com/mesh-dev/mesh/version.Version=...".
package version

// Version is mesh's release; it equals the chart's appVersion.
var Version = "0.1.0"
