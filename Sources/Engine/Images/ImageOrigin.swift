/// The image a container plugin was installed from: the reference as given and the
/// manifest digest pinned when it was pulled.
public struct ImageOrigin: Sendable, Hashable, Codable {
    /// The reference (`127.0.0.1:5000/team/label:1.2`, `oci:/srv/images:label`).
    public var reference: String
    /// The manifest digest (`sha256:...`).
    public var digest: String

    /// An origin of `reference` at `digest`.
    public init(reference: String, digest: String) {
        self.reference = reference
        self.digest = digest
    }
}
