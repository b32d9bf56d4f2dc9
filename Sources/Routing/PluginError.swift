/// An error a plugin's handler throws with a code of its own (`volume.not-found`): the code
/// travels unchanged to whoever called — an admin client, another plugin — in process or
/// over the wire, instead of becoming `routing.handler-failed`.
public struct PluginError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The code, as the caller sees it: dotted words with dashes (`volume.not-found`).
    public var code: String
    /// What happened, for a person.
    public var message: String

    /// An error with `code` saying `message`.
    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }

    /// "CODE: MESSAGE".
    public var description: String { "\(code): \(message)" }
}

extension RoutingError {
    /// The one spelling of this error's code on the wire: the handler's own code when a
    /// plugin gave one, else `routing.` and the code with dashes (`routing.unknown-job`).
    public var wireCode: String {
        handlerCode ?? "routing." + code.description.replacingOccurrences(of: " ", with: "-")
    }
}
