extension Admin {
    /// `plugin.install`: pulls a plugin image (`HOST[:PORT]/NAME[:TAG][@sha256:HEX]` or
    /// `oci:DIR[:TAG]`), refuses it unless what it asks for is granted, pins its digest and
    /// adds it as a container plugin.
    public struct PluginInstall: AdminRequest {
        /// The command: `plugin.install`.
        public static let command = AdminCommand.pluginInstall
        /// What the daemon answers: the plugin, its state, the image and the pinned digest.
        public typealias Reply = PluginInstalled
        /// The image reference.
        public var reference: String
        /// The plugin's name; nil takes the image's.
        public var alias: String?
        /// Grant every privilege the manifest asks for (and every job it calls).
        public var grantAllPermissions: Bool
        /// Privileges granted one by one (`network=host`, `mount=SRC:DST[:ro]`, …).
        public var privileges: [String]?
        /// The option string.
        public var options: String?

        /// An install of `reference`.
        public init(reference: String, alias: String? = nil, grantAllPermissions: Bool = false, privileges: [String]? = nil, options: String? = nil) {
            self.reference = reference
            self.alias = alias
            self.grantAllPermissions = grantAllPermissions
            self.privileges = privileges
            self.options = options
        }

        enum CodingKeys: String, CodingKey {
            case reference, alias, privileges, options
            case grantAllPermissions = "grant_all_permissions"
        }
    }

    /// The answer to `plugin.install`.
    public struct PluginInstalled: Codable, Sendable, Hashable {
        /// The plugin's name.
        public var name: String
        /// Its state once added (active).
        public var state: String
        /// The image reference.
        public var image: String
        /// The manifest digest pinned.
        public var digest: String
        /// The answer.
        public init(name: String, state: String, image: String, digest: String) {
            self.name = name
            self.state = state
            self.image = image
            self.digest = digest
        }
    }

    /// `plugin.upgrade`: starts a new version beside the running one, switches its
    /// registrations over, drains and stops the old one; rolls back when the new one fails.
    public struct PluginUpgrade: AdminRequest {
        /// The command: `plugin.upgrade`.
        public static let command = AdminCommand.pluginUpgrade
        /// What the daemon answers: the versions before and after.
        public typealias Reply = PluginUpgraded
        /// The plugin.
        public var name: String
        /// The new image, for a container plugin.
        public var reference: String?
        /// The new command, for an exec plugin ("COMMAND ARGS", split on spaces).
        public var exec: String?
        /// How long the old version's in-flight calls may take to finish, in milliseconds.
        public var drainMilliseconds: Int64?

        /// An upgrade of `name`.
        public init(name: String, reference: String? = nil, exec: String? = nil, drainMilliseconds: Int64? = nil) {
            self.name = name
            self.reference = reference
            self.exec = exec
            self.drainMilliseconds = drainMilliseconds
        }

        enum CodingKeys: String, CodingKey {
            case name, reference, exec
            case drainMilliseconds = "drain_ms"
        }
    }

    /// The answer to `plugin.upgrade`.
    public struct PluginUpgraded: Codable, Sendable, Hashable {
        /// The plugin.
        public var name: String
        /// The version the old run declared.
        public var oldVersion: String
        /// The version the new run declared.
        public var newVersion: String
        /// The image, for an image upgrade.
        public var image: String?
        /// The pinned digest, for an image upgrade.
        public var digest: String?

        /// The answer.
        public init(name: String, oldVersion: String, newVersion: String, image: String? = nil, digest: String? = nil) {
            self.name = name
            self.oldVersion = oldVersion
            self.newVersion = newVersion
            self.image = image
            self.digest = digest
        }

        enum CodingKeys: String, CodingKey {
            case name, image, digest
            case oldVersion = "old_version"
            case newVersion = "new_version"
        }
    }
}
