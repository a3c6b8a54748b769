// Package controlplanev1 is the versioned gRPC API between mesh-controller
// and the proxies: policy, destinations and trust bundle watches.
//
// The generated code is committed; regenerate it after editing
// controlplane.proto with `go generate ./controlplane/api/v1` (protoc from
// Debian's protobuf-compiler, protoc-gen-go v1.36.12, protoc-gen-go-grpc
// v1.6.0).
package controlplanev1

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative controlplane.proto
