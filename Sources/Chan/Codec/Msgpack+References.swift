extension Msgpack {
    /// Decodes exactly one value as strictly as ``decode(_:limits:)``, but keeps channel
    /// references as plain ``Value/ext(type:data:)`` values (types 0x50...0x53, the 8-byte
    /// big-endian id as payload) instead of refusing them.
    ///
    /// For tools that speak the wire protocol frame by frame without a ``Session`` (the
    /// conformance kit): they see every reference as it was sent. `values` is how many
    /// msgpack values the body holds, as the session counts them.
    public static func decodeKeepingReferences(_ bytes: some Collection<UInt8>, limits: DecodingLimits = .default) throws -> (value: Value, values: Int) {
        let contiguous = Array(bytes)
        return try contiguous.withUnsafeBytes { raw in
            try MsgpackUnpacker.unpack(raw, limits: limits) { reference in
                .ext(type: reference.kind.rawValue, data: reference.payload)
            }
        }
    }
}
