#if canImport(Glibc)
import Glibc
#endif
import Logging

/// The daemon's open-file limit: its soft limit raised to its hard limit at start, so that
/// it is the hard limit, not a default of 1024, that bounds how many descriptors plugins,
/// sessions and listeners can hold together (each listener bounds its own connections).
enum DescriptorLimit {
    /// Raises RLIMIT_NOFILE's soft limit to the hard limit and logs what it did.
    static func raise(logger: Logger) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
            logger.warning("cannot read the open file limit (RLIMIT_NOFILE): \(String(cString: strerror(errno)))")
            return
        }
        let soft = limit.rlim_cur
        guard soft < limit.rlim_max else {
            logger.info("open file limit (RLIMIT_NOFILE) is \(describe(soft)), its hard limit")
            return
        }
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 else {
            logger.warning("cannot raise the open file limit (RLIMIT_NOFILE) from \(describe(soft)) to its hard limit \(describe(limit.rlim_max)): \(String(cString: strerror(errno)))")
            return
        }
        logger.info("raised the open file limit (RLIMIT_NOFILE) from \(describe(soft)) to \(describe(limit.rlim_max)), its hard limit")
    }

    static func describe(_ value: rlim_t) -> String {
        value == rlim_t.max ? "unlimited" : "\(value)"
    }
}

extension Plugboardd {
    /// A logger writing as the daemon's will once `run()` has set up logging (same format
    /// and level), for what happens before that.
    func startupLogger() -> Logger {
        let level = logLevel ?? .info
        let format = logFormat ?? .text
        return Logger(label: "plugboardd") { label in
            switch format {
            case .text:
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            case .json:
                return JSONLogHandler(label: label, level: level)
            }
        }
    }
}
