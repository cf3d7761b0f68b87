//! The circles WebSocket server (work in progress).
