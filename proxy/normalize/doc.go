// Package normalize canonicalises the parts of an inbound HTTP request that
// authorization decides on: the path, the method and mesh's own headers.
//
// The proxy authorises a request and then forwards it. If the policy engine
// and the application read the path differently, a rule can be walked
// around: "DENY /admin*" does not match "//admin" or "/x/../admin", and many
// applications serve /admin for both (CVE-2021-31920 was this in Istio). So
// the proxy normalises once, with Path, and the one result is what
// authorization matches, what the audit log records and what the
// application receives: the application gets exactly what was authorised.
//
// # Paths
//
// In every mode but NONE, Path:
//
//   - rejects invalid percent-encodings (%zz, %2, a '%' at the end), %00,
//     a fragment ('#'), control characters and spaces;
//   - rejects an encoded '/' or '\' (%2F, %5C, either case), except in
//     DECODE_AND_MERGE_SLASHES, which decodes them to '/' first;
//   - decodes percent-encoded unreserved characters (ALPHA DIGIT - . _ ~),
//     so /%61dmin is /admin, and writes the hex of the encodings it keeps in
//     upper case (%3a becomes %3A); encodings are decoded once (%2561 stays
//     %2561);
//   - percent-encodes bytes that may not appear raw in a path (such as
//     "{|}" and non-ASCII bytes), so the raw and the encoded spelling are
//     one path;
//   - turns a literal '\' into '/';
//   - removes dot segments as RFC 3986 5.2.4 does, after decoding (so %2e%2e
//     is ".."); ".." above the root stays at the root;
//   - rejects a dot segment with parameters ("..;x", ".;"), which Java
//     servlet containers read as ".." and ".";
//   - in MERGE_SLASHES and DECODE_AND_MERGE_SLASHES, merges runs of '/'.
//
// The result starts with '/' (or is "*" for the target "*"). The query is
// returned as sent. NONE returns the path as sent; it still requires the
// target to be origin-form, absolute-form or "*" and free of control
// characters. The default is MERGE_SLASHES. Examples (400 is an error):
//
//	request target            BASE              MERGE_SLASHES     DECODE_AND_MERGE_SLASHES
//	/admin                    /admin            /admin            /admin
//	//admin                   //admin           /admin            /admin
//	/./admin                  /admin            /admin            /admin
//	/x/../admin               /admin            /admin            /admin
//	/x/%2e%2e/admin           /admin            /admin            /admin
//	/../../admin              /admin            /admin            /admin
//	/%61dmin                  /admin            /admin            /admin
//	/admin/.                  /admin/           /admin/           /admin/
//	/admin/..                 /                 /                 /
//	/x/..\admin               /admin            /admin            /admin
//	/a/..%2Fadmin             400               400               /admin
//	/admin%2F                 400               400               /admin/
//	/admin%5cx                400               400               /admin/x
//	/a//../admin              /a/admin          /admin            /admin
//	/x/..;/admin              400               400               400
//	/admin;x                  /admin;x          /admin;x          /admin;x
//	/admin%3bx                /admin%3Bx        /admin%3Bx        /admin%3Bx
//	/admin?x=/../y            /admin            /admin            /admin
//	/a{b}                     /a%7Bb%7D         /a%7Bb%7D         /a%7Bb%7D
//	/admin%zz                 400               400               400
//	/admin%00                 400               400               400
//	/admin#x                  400               400               400
//	http://h//admin           //admin           /admin            /admin
//	http://h                  /                 /                 /
//	admin                     400               400               400
//	/ADMIN                    /ADMIN            /ADMIN            /ADMIN
//	*                         *                 *                 *
//
// # How path rules match
//
// AuthorizationPolicy path rules match the normalised, escaped path: "/x"
// exactly, "/x*" as a prefix, "*.x" as a suffix, "*" anything. Write rules in
// normalised form: no dot segments or double slashes (they can never match),
// unreserved characters plain, other encodings with upper-case hex
// ("/files/a%20b", not "/files/a b"). Because dot segments are gone and %2F
// is refused, "DENY /admin*" also covers //admin, /x/../admin,
// /x/%2e%2e/admin, /%61dmin and /admin/.; note that it covers /administrator
// too, and that "/admin" alone does not cover "/admin/" or "/admin;x".
// "/admin" together with "/admin/*" names the admin tree and nothing else
// (add "/admin;*" for servers that take ';' parameters).
//
// A reserved character and its encoding (':' and %3A, ';' and %3B) stay
// different paths, as RFC 3986 says; an application that decodes both to
// the same thing (Go's ServeMux, most routers) serves both. A rule that
// names such a character must list both spellings; better, keep them out of
// DENY rules and rely on ALLOW. Encodings are decoded once, so an
// application that decodes twice can still see %252e%252e as "..".
//
// Matching is case-sensitive, and Path preserves case: /ADMIN is a different
// path from /admin. For an application that treats paths
// case-insensitively (IIS, some Spring and Express setups), a DENY cannot
// list every spelling: protect it with ALLOW rules naming the exact
// lower-case paths it serves, so default deny refuses /ADMIN, or make the
// application itself case-sensitive.
//
// # Methods
//
// Method refuses a method that equals a standard one except in case
// ("delete", "Get"): an application comparing methods case-insensitively
// would otherwise serve a DELETE that a "DENY DELETE" rule never saw.
//
// # Headers
//
// Headers removes every client-sent variant of mesh's own headers (any
// case, '_' for '-': X-Mesh-Peer-Identity, x_mesh_peer_identity) before
// the proxy sets the verified one, and rejects, drops or allows other
// header names containing '_', which CGI-style frameworks cannot tell from
// the name with '-'.
package normalize
