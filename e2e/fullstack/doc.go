// Package fullstack holds the tests that run mesh's parts together on the
// local cluster: the CA and identity service attesting pods with the real
// API server, proxies getting their SVIDs from it, and policies enforced
// between them.
package fullstack
