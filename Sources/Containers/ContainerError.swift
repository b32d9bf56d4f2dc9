/// Why a container operation failed.
public struct ContainerError: Error, Hashable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        /// The code as written (`bad-bundle`).
        public var description: String { name }

        /// A plugin bundle without a readable, valid plugin.json or rootfs/.
        public static let badBundle = Code("bad-bundle")
        /// A container spec that cannot be run (after the hooks, if any changed it).
        public static let badSpec = Code("bad-spec")
        /// Privileges asked for and not granted.
        public static let notGranted = Code("not-granted")
        /// No container with that id or name.
        public static let unknownContainer = Code("unknown-container")
        /// The operation does not fit the container's state (start a running one, rm a running one).
        public static let wrongState = Code("wrong-state")
        /// A name already in use.
        public static let nameInUse = Code("name-in-use")
        /// runc failed or is missing.
        public static let runtime = Code("runtime")
        /// Not an image reference (`HOST/NAME[:TAG][@DIGEST]`, `oci:DIR[:TAG]`).
        public static let badImageReference = Code("bad-image-reference")
        /// An image could not be pulled, read, verified or unpacked.
        public static let badImage = Code("bad-image")
    }

    /// What went wrong.
    public var code: Code
    /// A sentence for a person.
    public var reason: String

    /// An error of `code` saying `reason`.
    public init(_ code: Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    /// The reason.
    public var description: String { reason }
}
