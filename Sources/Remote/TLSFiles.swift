import NIOSSL

/// The PEM files of one side of a mutual-TLS connection: its own certificate (chain) and
/// private key, and the CA bundle the other side's certificate must chain to.
public struct TLSFiles: Sendable, Hashable {
    /// Our certificate, PEM (the leaf first, then any intermediates).
    public var certificate: String
    /// Our private key, PEM.
    public var key: String
    /// The CA bundle, PEM: the peer's certificate must be signed by one of these.
    public var ca: String

    /// The three files.
    public init(certificate: String, key: String, ca: String) {
        self.certificate = certificate
        self.key = key
        self.ca = ca
    }

    /// From `PLUGBOARD_TLS_CERT`, `PLUGBOARD_TLS_KEY` and `PLUGBOARD_TLS_CA` in
    /// `environment`: nil when none is set; an error naming the missing ones when only some are.
    public static func fromEnvironment(_ environment: [String: String]) throws(TLSSetupError) -> TLSFiles? {
        let names = ["PLUGBOARD_TLS_CERT", "PLUGBOARD_TLS_KEY", "PLUGBOARD_TLS_CA"]
        let values = names.map { environment[$0].flatMap { $0.isEmpty ? nil : $0 } }
        if values.allSatisfy({ $0 == nil }) { return nil }
        let missing = zip(names, values).filter { $0.1 == nil }.map(\.0)
        guard missing.isEmpty, let cert = values[0], let key = values[1], let ca = values[2] else {
            throw TLSSetupError("TLS needs all of PLUGBOARD_TLS_CERT, PLUGBOARD_TLS_KEY and PLUGBOARD_TLS_CA; missing: \(missing.joined(separator: ", "))")
        }
        return TLSFiles(certificate: cert, key: key, ca: ca)
    }

    /// The server side: our certificate, and a client certificate required and verified
    /// against the CA bundle (its name is checked by the caller, not as a host name).
    public func serverContext() throws(TLSSetupError) -> NIOSSLContext {
        let (chain, key, roots) = try load()
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.certificateVerification = .noHostnameVerification
        configuration.trustRoots = .certificates(roots)
        configuration.minimumTLSVersion = .tlsv12
        do { return try NIOSSLContext(configuration: configuration) } catch { throw TLSSetupError("cannot make a TLS context: \(error)") }
    }

    /// The client side: our certificate presented, the server's verified against the CA
    /// bundle. The server's host name is not checked: the CA bundle is what pins it.
    public func clientContext() throws(TLSSetupError) -> NIOSSLContext {
        let (chain, key, roots) = try load()
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.certificateChain = chain.map { .certificate($0) }
        configuration.privateKey = .privateKey(key)
        configuration.trustRoots = .certificates(roots)
        configuration.certificateVerification = .noHostnameVerification
        configuration.minimumTLSVersion = .tlsv12
        do { return try NIOSSLContext(configuration: configuration) } catch { throw TLSSetupError("cannot make a TLS context: \(error)") }
    }

    private func load() throws(TLSSetupError) -> ([NIOSSLCertificate], NIOSSLPrivateKey, [NIOSSLCertificate]) {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        let roots: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMFile(certificate) } catch { throw TLSSetupError("cannot read the certificate \(certificate): \(error)") }
        guard !chain.isEmpty else { throw TLSSetupError("the certificate file \(certificate) holds no certificate") }
        do { key = try NIOSSLPrivateKey(file: self.key, format: .pem) } catch { throw TLSSetupError("cannot read the private key \(self.key): \(error)") }
        do { roots = try NIOSSLCertificate.fromPEMFile(ca) } catch { throw TLSSetupError("cannot read the CA bundle \(ca): \(error)") }
        guard !roots.isEmpty else { throw TLSSetupError("the CA bundle \(ca) holds no certificate") }
        return (chain, key, roots)
    }
}

/// TLS files that cannot be used: what is wrong, with the file named.
public struct TLSSetupError: Error, Sendable, CustomStringConvertible {
    /// What is wrong.
    public var description: String

    init(_ description: String) {
        self.description = description
    }
}

extension NIOSSLCertificate {
    /// The subject's common name (the last one when there are several), or nil.
    var subjectCommonName: String? {
        subjectName.last { $0.type == .commonName }?.value
    }
}
