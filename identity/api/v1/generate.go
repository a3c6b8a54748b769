// Package identityv1 is the versioned gRPC API of the identity service.
//
// The generated code is committed; regenerate it after editing
// identity.proto with `go generate ./identity/api/v1` (protoc from Debian's
// protobuf-compiler, protoc-gen-go v1.36.12, protoc-gen-go-grpc v1.6.0).
package identityv1

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative identity.proto
