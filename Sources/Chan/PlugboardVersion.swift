/// The Plugboard release this build is, shared by every binary (`plugboard`, `plugboardd`,
/// `plugboard-sh`, …): they all link Chan, so the one constant lives beside the protocol
/// version it ships with.
public enum PlugboardVersion {
    /// The release, as `--version` prints it.
    public static let release = "0.1.0"

    /// The Chan protocol version this build speaks (``Hello/currentProtocol``).
    public static var protocolVersion: Int64 { Hello.currentProtocol }
}
