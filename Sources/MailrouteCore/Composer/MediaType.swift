/// A content type for an attachment from its file name, for `mailroutectl enqueue --attach`.
public enum MediaType {
    static let byExtension: [String: String] = [
        "pdf": "application/pdf", "csv": "text/csv", "txt": "text/plain", "html": "text/html", "htm": "text/html",
        "json": "application/json", "xml": "application/xml", "zip": "application/zip", "gz": "application/gzip",
        "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "svg": "image/svg+xml",
        "ics": "text/calendar", "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "mp3": "audio/mpeg",
        "wav": "audio/wav",
    ]

    public static func guess(for filename: String) -> String {
        guard let dot = filename.lastIndex(of: ".") else { return "application/octet-stream" }
        return byExtension[filename[filename.index(after: dot)...].lowercased()] ?? "application/octet-stream"
    }
}
